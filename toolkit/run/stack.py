"""The built-in faults of the stack perfkit starts itself (`--fault "at=20s,stack=NAME"`, no
--target): Python actions on the bundled service's processes and database, each returning a
record shaped as run/faults.py's `run_command` (so run.json's faults read the same).

- `service-restart`: the service's whole process tree (its Celery nodes too) SIGKILLed, then
  `perfkit serve` started again on the same port, database and instance id, up to healthy.
- `postgres-outage`: its PostgreSQL database refuses new connections (`ALTER DATABASE ... WITH
  ALLOW_CONNECTIONS false`) and its connections are cut (`pg_terminate_backend`) for `for`,
  then allowed again: what a restart looks like to the service, for its own database only, so
  whatever else uses that PostgreSQL cluster is not disturbed. The statements run on the
  server's `postgres` database with the service URL's credentials (its owner or a superuser).
- `celery-kill`: SIGKILL of the Celery pool processes (the children of the worker nodes); the
  nodes fork new ones.
- `redis-pause` would SIGSTOP a Redis perfkit started for the service; perfkit starts none, so
  the runner refuses it (exit 2) before the run.
"""

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import psutil
from sqlalchemy.engine import make_url

from . import target
from .processes import start_child

log = logging.getLogger(__name__)

WORKER_MODULE = "perfkit.reference.workers"  # the Celery nodes' command line


class BundledStack:
    """The managed service and what the built-in faults need to act on it. `on_restart(pid)`
    is told the new service's PID (the resource sampler follows it)."""

    def __init__(self, managed: target.ManagedTarget, serve_args: list[str], run_dir: Path,
                 database_url: str | None, on_restart: Callable[[int], None]) -> None:
        self.managed = managed
        self.serve_args = serve_args
        self.run_dir = run_dir
        self.database_url = database_url
        self.on_restart = on_restart
        self.restarts = 0

    def act(self, name: str, phase: str, timeout_s: float) -> dict[str, Any]:
        """Run `phase` ("do" or "undo") of the fault `name`: a run_command-shaped record."""
        started = time.monotonic()
        record: dict[str, Any] = {"command": f"stack={name} {phase}", "exit_code": None,
                                  "duration_s": None, "timed_out": False, "output": "",
                                  "error": ""}
        try:
            if name == "postgres-outage":
                # psycopg blocks: in a thread, off the load's loop. The process actions wait
                # through gevent's own subprocess and sleep, which cannot run in a thread.
                record["output"] = gevent.get_hub().threadpool.apply(
                    self._act, (name, phase, timeout_s))
            else:
                record["output"] = self._act(name, phase, timeout_s)
            record["exit_code"] = 0
        except Exception as exc:  # a boundary: the fault failed, the run goes on and says so
            log.warning("stack fault %s %s failed", name, phase, exc_info=True)
            record["exit_code"] = 1
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["output"] = record["error"]
        record["duration_s"] = round(time.monotonic() - started, 3)
        return record

    def _act(self, name: str, phase: str, timeout_s: float) -> str:
        if name == "service-restart":
            return self.restart_service(timeout_s)
        if name == "celery-kill":
            return kill_celery_pool(self.managed.process.pid)
        if name == "postgres-outage":
            assert self.database_url is not None  # the runner refuses it without one
            return set_postgres_outage(self.database_url, phase == "do", timeout_s)
        raise ValueError(f"stack={name} cannot run here")  # the runner refuses it before

    def restart_service(self, timeout_s: float) -> str:
        old_pid = self.managed.process.pid
        self.managed.restarting = True
        try:
            killed = kill_tree(old_pid)
            self.managed.process.wait()
            port = int(self.managed.url.rsplit(":", 1)[1])
            self.restarts += 1
            log_path = self.run_dir / f"target-restart-{self.restarts}.log"
            command = target.serve_command(self.serve_args, port)
            self.managed.process = start_child(command, log_path)
        finally:
            self.managed.restarting = False
        target.wait_until_healthy(self.managed.url, timeout_s, self.managed.process)
        self.on_restart(self.managed.process.pid)
        return (f"killed {killed} processes of pid {old_pid}; pid "
                f"{self.managed.process.pid} healthy on port {port} ({log_path.name})")


def kill_tree(pid: int) -> int:
    """SIGKILL `pid` and every descendant (the Celery nodes live in groups of their own);
    how many were killed."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(processes)


def kill_celery_pool(service_pid: int) -> str:
    """SIGKILL the pool processes of the service's Celery nodes."""
    pool = []
    for process in psutil.Process(service_pid).children(recursive=True):
        try:
            if WORKER_MODULE in " ".join(process.cmdline()):
                pool += process.children()
        except psutil.NoSuchProcess:
            continue
    if not pool:
        raise RuntimeError("the bundled service has no Celery pool processes (--queue celery?)")
    for process in pool:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return f"killed {len(pool)} Celery pool processes: {', '.join(str(p.pid) for p in pool)}"


def admin_url(database_url: str) -> tuple[str, str]:
    """(a libpq URL of the server's `postgres` database with the service's credentials, the
    service's database name) from its SQLAlchemy URL."""
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {url.drivername}")
    admin = url.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False), str(url.database)


def set_postgres_outage(database_url: str, out: bool, timeout_s: float) -> str:
    import psycopg  # the postgres extra; the runner checks it is there before the run

    conninfo, name = admin_url(database_url)
    quoted = name.replace('"', '""')
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, int(timeout_s))) \
            as conn:
        if not out:
            conn.execute(f'ALTER DATABASE "{quoted}" WITH ALLOW_CONNECTIONS true')
            return f"database {name} accepts connections again"
        conn.execute(f'ALTER DATABASE "{quoted}" WITH ALLOW_CONNECTIONS false')
        cut = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()
    return f"database {name} refuses connections; {cut[0] if cut else 0} connections cut"
