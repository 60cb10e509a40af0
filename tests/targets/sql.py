"""A target whose requests run real SQL on PostgreSQL and that reports no metrics of its own,
as most services perfkit meets: `/metrics` and `/api/v1/metrics/*` answer 404.

    python tests/targets/sql.py --database-url postgresql://postgres@127.0.0.1/DB --sleep-ms 20

Every other request, whatever its method or path, runs `SELECT pg_sleep($1)` for `--sleep-ms`
(a statement of known duration) and one `INSERT INTO visits`, then answers 200. Prints its
base URL once it listens.
"""

import argparse

import asyncpg
from aiohttp import web
from serving import run_app


def build_app(database_url: str, sleep_ms: float) -> web.Application:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such metrics here\n")

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        pool: asyncpg.Pool = request.app["pool"]
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep($1)", sleep_ms / 1000.0)
            await conn.execute("INSERT INTO visits (path) VALUES ($1)", request.path)
        return web.Response(text="ok\n")

    async def open_pool(app: web.Application) -> None:
        app["pool"] = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
        async with app["pool"].acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS visits "
                               "(id bigserial PRIMARY KEY, path text NOT NULL)")

    async def close_pool(app: web.Application) -> None:
        await app["pool"].close()

    app = web.Application()
    app.on_startup.append(open_pool)
    app.on_cleanup.append(close_pool)
    app.router.add_route("*", "/metrics", not_found)
    app.router.add_route("*", "/api/v1/metrics/{tail:.*}", not_found)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--sleep-ms", type=float, default=20.0)
    args = parser.parse_args()
    try:
        run_app(build_app(args.database_url, args.sleep_ms), args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
