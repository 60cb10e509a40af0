"""The long one (about 1.5 minutes): `bench/soak.py --duration 80s` against the reference
service on PostgreSQL with a private Redis, the guide's load shape at twice what the research
slots finish, Redis paused for 12 s and its PostgreSQL database cut off once as a restart
does it (every connection dropped, new ones refused for 2 s; what a cut-off connection does
to each statement is tests/test_reference_bounds.py's, ten times over). Calls are 300 ms
instead of the guide's 8 s so the backlog fills and drains inside the run; the hour-long
version is the bench (docs/reliability.md has its figures).

Only its own database is cut off, so it runs beside other PostgreSQL tests; `bench/soak.py`
without `--postgres-fault outage` restarts the machine's cluster itself."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.timeout(600)
def test_soak_over_capacity_with_redis_paused_and_postgresql_cut_off(
        tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(SOAK), "--duration", "80s", "--item-latency-ms",
                          "300", "--max-queued-jobs", "40", "--postgres-fault", "outage",
                          "--json", str(report)],
                         capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    log = report.with_suffix(".log").read_text()  # the service's log, kept by the bench
    explained = run.stdout[-2500:] + log[log.rfind("Traceback"):][-3000:] * ("Traceback" in log)
    # Bounded: the backlog never passed the cap; creates past it were 503 with Retry-After.
    assert result["peak_queued_jobs"] <= result["max_queued_jobs"], explained
    assert result["rejected_503"] > 0 and result["retry_after_missing"] == 0, explained
    # Faults were felt (Redis lookups failed) but never surfaced as server errors.
    assert result["cache_errors"] > 0, explained
    assert result["server_errors"] == 0 and result["no_answer"] == 0, explained
    assert result["service_tracebacks"] == 0 and result["service_exit_code"] == 0, explained
    # Research came back after the restart, and nothing was left half-done.
    assert result["first_success_after_recovery_s"] is not None, explained
    assert result["first_success_after_recovery_s"] < 30, explained
    assert result["left_active"] == 0, explained
    assert set(result["jobs"]) <= {"success", "error"}, explained
    # Memory flat after warm-up: a leak of a job's worth per create would be tens of MB here.
    assert result["rss_last_quarter_mb"] - result["rss_first_quarter_mb"] < 20, explained
