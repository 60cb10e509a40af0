"""A Python process tree that keeps busy in functions with known names, for monitor and profiling.

The root spins the CPU in `spin_perfkit_target` (what a flamegraph must name), holds a
listening socket on 127.0.0.1 (an open connection to count), optionally starts `--children`
copies of itself and grows a list in `grow_perfkit_cache` at `--allocate-kb-s` (what an
allocation profile must name). Prints its listening address once ready; exits by itself after
`--seconds`, so a test that dies never leaves it behind for long.

    python tests/targets/busy.py --seconds 30 --children 1 --allocate-kb-s 512
"""

import argparse
import socket
import subprocess
import sys
import time

retained: list[bytes] = []


def spin_perfkit_target(until: float) -> int:
    total = 0
    while time.monotonic() < until:
        total += sum(i * i for i in range(2000))
    return total


def grow_perfkit_cache(kilobytes: int) -> None:
    retained.extend(bytes(1024) for _ in range(kilobytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--allocate-kb-s", type=int, default=0)
    args = parser.parse_args()
    ends_at = time.monotonic() + args.seconds
    children = [subprocess.Popen([sys.executable, __file__, "--seconds", str(args.seconds)],
                                 stdout=subprocess.DEVNULL)
                for _ in range(args.children)]
    listener = socket.create_server(("127.0.0.1", 0))
    host, port = listener.getsockname()[:2]
    print(f"tcp://{host}:{port}", flush=True)
    # Work in slices of 100 ms, so allocation keeps pace with time as well as the spinning.
    while time.monotonic() < ends_at:
        spin_perfkit_target(min(ends_at, time.monotonic() + 0.1))
        if args.allocate_kb_s:
            grow_perfkit_cache(args.allocate_kb_s // 10)
    listener.close()
    for child in children:
        child.wait()


if __name__ == "__main__":
    main()
