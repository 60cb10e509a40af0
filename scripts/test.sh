#!/usr/bin/env bash
# Installs everything perfkit's tests need on a fresh Debian machine with Python 3.11, then runs
# them. Idempotent: a second run only re-checks. This is the README's test command and .ci/run's.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL, Redis and RabbitMQ back the reference service's tests; start any that is down.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/perfkit-redis.log || true
fi

# RabbitMQ is the second Celery broker of the reference service's tests.
if command -v rabbitmq-server >/dev/null && ! (echo >/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    rabbitmq-server -detached >/tmp/perfkit-rabbitmq.log 2>&1 || true
    for _ in $(seq 30); do (echo >/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
fi

# Headless Chromium opens the HTML report in the report tests; gdb lets memray attach to a live
# process (perfkit profile --memory); a real Prometheus scrapes perfkit's live metrics.
if { ! command -v chromium || ! command -v gdb || ! command -v prometheus; } >/dev/null \
        && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium gdb \
        prometheus) >/tmp/perfkit-apt.log 2>&1 \
        || echo "warning: chromium, gdb or prometheus could not be installed" >&2
fi
# Debian's package starts a Prometheus of its own where a service manager runs; the tests
# start theirs on free ports, so that one is left alone.

# pg_stat_statements must be preloaded (a restart) for the --db-url statement timings.
if command -v psql >/dev/null && pg_isready -q -h 127.0.0.1 && ! psql -h 127.0.0.1 -U postgres \
        -Atc "SHOW shared_preload_libraries" 2>/dev/null | grep -q pg_stat_statements; then
    psql -h 127.0.0.1 -U postgres -qc \
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" \
        && pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main restart \
        || echo "warning: pg_stat_statements could not be enabled" >&2
fi

PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The exact versions the tests are known to pass with (pyproject.toml has ranges), installed by
# uv, which fetches them in parallel: pip took 55-146 s for them in a fresh venv here, reading
# every package's whole index page one after another. Compiled to bytecode as pip does: where
# PYTHONDONTWRITEBYTECODE is set (it is on these machines) every process would otherwise
# compile all it imports again.
.venv/bin/pip install -q --disable-pip-version-check uv==0.13.8
.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -c constraints.txt \
    -e '.[dev]'
.venv/bin/ruff check .
.venv/bin/mypy toolkit
# Given arguments, pytest runs just those. Otherwise: the regression check (simultaneous A/A
# and A/B of the reference service on this machine, about 75 s), then the suite in two phases:
# what only waits on its own processes four files at a time, then what measures timing or CPU,
# or restarts PostgreSQL (marked serial), alone.
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
bash .ci/regression-check
# Four workers on two cores: phase 1's tests mostly wait on their own processes (about 440
# CPU-seconds in 9 minutes at -n 4); xdist hands out whole files, so module fixtures are made
# once, longest first (tests/conftest.py).
.venv/bin/python -m pytest -m "not serial" -n 4 --dist loadfile --no-loadscope-reorder
exec .venv/bin/python -m pytest -m serial
