"""A target for Locust's own example locustfiles (tests/data/locust_examples/): it counts what
it served and answers what those examples expect.

    python tests/targets/counting.py --delay-ms 20 --welcome foo

Every request is counted per "METHOD /path"; a POST body's leading words (up to the first
character that is not a letter, '_' or '-', e.g. "global_test_data_") are counted too, so a
test can tell which hook sent it. `GET /__count` answers {"routes": {...}, "bodies": {...}}.
Answers, after `--delay-ms`: POST /post echoes the body as postman-echo does ({"data": BODY});
POST /authenticate says {"message": "Welcome NAME!"} (NAME: `--welcome`, the example's user is
"foo"); POST /checkout/confirm gives {"orderId": 42}; /does_not_exist is 404; anything else
is "ok". Prints its base URL once it listens.
"""

import asyncio
import re

from aiohttp import web
from serving import run_app, target_arguments

_BODY_KIND = re.compile(r"^[A-Za-z_\-]+")


def build_app(delay_ms: float, welcome: str) -> web.Application:
    routes: dict[str, int] = {}
    bodies: dict[str, int] = {}

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"routes": routes, "bodies": bodies})

    async def answer(request: web.Request) -> web.Response:
        route = f"{request.method} {request.path}"
        routes[route] = routes.get(route, 0) + 1
        body = (await request.read()).decode("utf-8", "replace")
        kind = _BODY_KIND.match(body) if request.method == "POST" else None
        if kind:
            bodies[kind.group(0)] = bodies.get(kind.group(0), 0) + 1
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        if request.path == "/post":
            return web.json_response({"data": body})
        if request.path == "/authenticate":
            return web.json_response({"message": f"Welcome {welcome}!"})
        if request.path == "/checkout/confirm":
            return web.json_response({"orderId": 42})
        if request.path == "/does_not_exist":
            return web.Response(status=404, text="not found\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/__count", count)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = target_arguments(__doc__)
    parser.add_argument("--welcome", default="foo")
    args = parser.parse_args()
    run_app(build_app(args.delay_ms, args.welcome), args.port, args.host)


if __name__ == "__main__":
    main()
