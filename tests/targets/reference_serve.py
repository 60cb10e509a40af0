"""`perfkit serve` with options given as keyword arguments of `server.serve_forever`, for the
ones the CLI does not declare yet: `python tests/targets/reference_serve.py '{"fast": true}'`."""

import json
import sys

from perfkit.reference.server import serve_forever

if __name__ == "__main__":
    serve_forever(say=lambda line: print(line, flush=True), **json.loads(sys.argv[1]))
