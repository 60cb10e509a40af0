"""Recovery of the bundled service from each built-in fault (`--fault stack=...`), in-process
and Celery, on SQLite and PostgreSQL: one `perfkit load` of the research scenario per case,
the fault at 15 s of 40 s, and a markdown table of what summary.json says.

    .venv/bin/python bench/stack_faults.py [--out reports/bench-stack-faults]
        [--broker redis://127.0.0.1:6379/13] [--only service-restart]

The PostgreSQL cases use a database of their own on 127.0.0.1:5432 (created and dropped
here; an outage of it disturbs nothing else on the cluster). Each case prints the command
that gave its numbers.
"""

import argparse
import json
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# (fault, queue, database): postgres-outage needs PostgreSQL, celery-kill Celery.
CASES = [
    ("service-restart", "inprocess", "sqlite"), ("service-restart", "inprocess", "postgres"),
    ("service-restart", "celery", "sqlite"), ("service-restart", "celery", "postgres"),
    ("postgres-outage", "inprocess", "postgres"), ("postgres-outage", "celery", "postgres"),
    ("celery-kill", "celery", "sqlite"), ("celery-kill", "celery", "postgres"),
]


def run_case(fault: str, queue: str, database: str, out: Path, broker: str,
             database_url: str) -> dict[str, Any]:
    run_dir = out / f"{fault}-{queue}-{database}"
    spec = f"at=15s,for=5s,stack={fault}" if fault == "postgres-outage" else \
        f"at=15s,stack={fault}"
    args = ["load", "--fast", "--scenario", "research", "--users", "6", "--duration", "40s",
            "--warmup", "0s", "--history", "off", "--fault", spec]
    if queue == "celery":
        args += ["--queue", "celery", "--broker", broker, "--service-queue-prefix",
                 f"perfkit-bench-{uuid.uuid4().hex[:8]}"]
    if database == "postgres":
        args += ["--service-database-url", database_url]
    shown = "perfkit " + shlex.join(args).replace(database_url, "postgresql+asyncpg://…/DB")
    subprocess.run([sys.executable, "-m", "perfkit", *args, "--out", str(run_dir)],
                   capture_output=True, text=True, timeout=300)
    summary = json.loads((run_dir / "summary.json").read_text())
    (measured,) = summary["faults"]
    return {"fault": fault, "queue": queue, "database": database, "command": shown,
            "status": measured["status"], "recovered": measured["recovered"],
            "recovery_s": measured["recovery_s"],
            "from_start_s": measured["recovery_from_start_s"],
            "errors": measured["errors"], "requests": measured["requests"],
            "availability": summary["availability"]["percent"],
            "lost": (summary["lost_work"] or {}).get("lost"),
            "accepted": (summary["lost_work"] or {}).get("accepted")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/bench-stack-faults"))
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--only", help="one fault's cases")
    args = parser.parse_args()
    name = f"perfkit_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    rows = []
    try:
        for fault, queue, database in CASES:
            if args.only and fault != args.only:
                continue
            row = run_case(fault, queue, database, args.out, args.broker, database_url)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("| fault | queue | database | recovered after its end (from its start) | errors / "
          "requests during it | availability | lost jobs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r['queue']} | {r['database']} | "
              f"{'' if r['recovered'] else 'NOT '}{r['recovery_s']:.2f} s "
              f"({r['from_start_s']:.2f} s) | {r['errors']} / {r['requests']} | "
              f"{r['availability']:.1f} % | {r['lost']} of {r['accepted']} |")


if __name__ == "__main__":
    main()
