"""A target that goes down for a known time when a fault command touches its control file.

    python tests/targets/outage.py --control /tmp/down --outage-s 3 --delay-ms 2

Every request is answered `200 ok` after --delay-ms, except within --outage-s of the control
file's last modification (a fault's `do=touch /tmp/down`): then `503` at once. Nothing is
kept in memory: the file's mtime is the whole state, so the outage starts when the command
ran, not when the next request came. Prints its base URL once it listens.
"""

import asyncio
import os
import time

from aiohttp import web
from serving import run_app, target_arguments


def build_app(control: str, outage_s: float, delay_ms: float) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        try:
            since_s = time.time() - os.stat(control).st_mtime
        except FileNotFoundError:
            since_s = None
        if since_s is not None and 0.0 <= since_s < outage_s:
            return web.Response(status=503, text="down\n")
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = target_arguments(__doc__)
    parser.add_argument("--control", required=True)
    parser.add_argument("--outage-s", type=float, default=3.0)
    args = parser.parse_args()
    run_app(build_app(args.control, args.outage_s, args.delay_ms), args.port, args.host)


if __name__ == "__main__":
    main()
