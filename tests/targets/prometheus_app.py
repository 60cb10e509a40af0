"""A service as most are instrumented: no research-API metrics endpoints, only a standard
Prometheus /metrics from prometheus_client (process metrics and an
`http_request_duration_seconds` histogram labelled method/handler/status, as
prometheus-fastapi-instrumentator writes it). Every request burns --burn-ms of CPU; the
process holds --hold-mb of memory. Prints its base URL once it listens.

    python tests/targets/prometheus_app.py [--tls CERT KEY] [--token SECRET]
"""

import argparse
import ssl
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from serving import run_app

LATENCY = Histogram("http_request_duration_seconds", "Request latency",
                    ["method", "handler", "status"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))


def build_app(burn_ms: float, token: str | None) -> web.Application:
    @web.middleware
    async def timed(request: web.Request, handler: object) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)  # type: ignore[operator]
        route = request.match_info.route.resource
        template = route.canonical if route is not None else "unmatched"
        if template != "/metrics":
            LATENCY.labels(request.method, template, str(response.status)).observe(
                time.perf_counter() - started)
        return response  # type: ignore[no-any-return]

    async def work(request: web.Request) -> web.Response:
        until = time.process_time() + burn_ms / 1000.0
        while time.process_time() < until:
            pass
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        if token and request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401, text="unauthorized\n")
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[timed])
    app.router.add_get("/api/v1/health", work)
    app.router.add_get("/items/{item_id}", work)
    app.router.add_get("/metrics", metrics)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--burn-ms", type=float, default=2.0)
    parser.add_argument("--hold-mb", type=int, default=64)
    parser.add_argument("--token")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    held = bytearray(args.hold_mb * 1024 * 1024)
    for i in range(0, len(held), 4096):  # touched, so resident
        held[i] = 1
    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.tls)
    try:
        run_app(build_app(args.burn_ms, args.token), args.port, ssl_context=context)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
