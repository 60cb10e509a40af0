"""Faults injected into real runs, and hostile run directories: afterwards no process of the
run is alive, no temporary directory is left, the exit code and status say what happened, a
report exists wherever one could be written, and nothing outside the run changed."""

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.synthetic import RunSpec, make_run, rewrite_as_jsonl

PERFKIT = [sys.executable, "-m", "perfkit"]


def serve_temp_dirs(children: list[psutil.Process]) -> list[Path]:
    """The temporary directories of the reference services among `children` still there.
    Only those last changed since the child started: PIDs wrap at 32768 here, and another
    test's service killed outright (SIGKILL) may have left one under a PID that is reused."""
    return [path for child in children
            for path in Path(tempfile.gettempdir()).glob(f"perfkit-serve-{child.pid}-*")
            if path.stat().st_mtime >= child.create_time() - 1.0]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(processes: list[psutil.Process], timeout_s: float = 60.0) -> list[psutil.Process]:
    """The processes still alive (zombies count as gone) after up to `timeout_s`."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def ignore_sigint() -> None:
    """As a shell starts a background job (`perfkit load &` in a CI script)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_load(out: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([*PERFKIT, "load", "--fast", "--scenario", "health", "--users", "2",
                             "--duration", "40s", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_sigint if sigint_ignored else None)


def wait_for_children(proc: subprocess.Popen[str], count: int,
                      timeout_s: float = 60.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = descendants(proc.pid)
        if len(children) >= count:
            return children
        time.sleep(0.2)
    raise AssertionError(f"perfkit started {len(descendants(proc.pid))} of {count} children")


# One second in, the service is still starting. Started with SIGINT ignored (as `perfkit load
# &` from a script is), the service used to inherit the ignore, miss perfkit's SIGINT while
# starting, and be killed 45 s later with its temporary directory left behind.
@pytest.mark.parametrize("after_s, sigint_ignored", [(1.0, False), (10.0, False), (1.0, True)])
def test_sigterm_stops_the_run_and_everything_it_started(tmp_path: Path, after_s: float,
                                                       sigint_ignored: bool) -> None:
    proc = start_load(tmp_path / "run", sigint_ignored=sigint_ignored)
    children = wait_for_children(proc, 1)
    time.sleep(after_s)
    children = descendants(proc.pid) or children
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr
    assert wait_gone(children) == []
    assert serve_temp_dirs(children) == []
    run_json = tmp_path / "run" / "run.json"
    if run_json.exists():  # past the service's start: the run says what happened
        meta = json.loads(run_json.read_text())
        assert meta["status"] == "interrupted"
        assert (tmp_path / "run" / "report.html").exists()


def test_sigkill_of_perfkit_takes_its_service_down_too(tmp_path: Path) -> None:
    proc = start_load(tmp_path / "run")
    wait_for_children(proc, 1)
    time.sleep(8)
    children = descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    # The parent-death signal makes the service drain and exit on its own.
    assert wait_gone(children) == []
    assert serve_temp_dirs(children) == []
    # The run never ended: rebuilt, it is not judged (exit 3), never a pass.
    done = subprocess.run([*PERFKIT, "report", str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr


def test_sigkill_of_perfkit_ab_takes_its_target_down_too(tmp_path: Path) -> None:
    proc = subprocess.Popen([*PERFKIT, "ab", "--a=--fast", "--b=--fast", "--repeat", "2",
                             "--scenario", "health", "--users", "2", "--duration", "30s",
                             "--history", "off", "--out", str(tmp_path / "ab")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_children(proc, 1)
    time.sleep(3)
    children = descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    assert children and wait_gone(children) == []
    assert serve_temp_dirs(children) == []


def test_a_full_disk_ends_the_run_cleanly(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        proc = start_load(disk / "run")
        children = wait_for_children(proc, 1)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr  # the environment: one line says what
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("perfkit: cannot write the run directory"), stderr
        assert last.endswith("No space left on device"), stderr
        assert wait_gone(children) == []
        assert serve_temp_dirs(children) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.serial  # two workers must join within 60 s: not always so beside other tests
def test_a_killed_local_worker_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = start_load(tmp_path / "run", "--workers", "2", "--duration", "12s")
    children = wait_for_children(proc, 3)
    workers = [p for p in children if "worker" in " ".join(p.cmdline())]
    assert len(workers) == 2
    time.sleep(4)
    workers[0].kill()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1, 3), stderr
    assert wait_gone(children) == []
    assert (tmp_path / "run" / "report.html").exists()


# --- hostile run directories: exit 2 with one line, nothing outside the run changed -------

def report(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PERFKIT, "report", str(run_dir)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("content", [
    "[]", "{}", "null", '"a string"', "[" * 100_000 + "]" * 100_000,
    '{"run_id": "x", "started_at": NaN}', '{"run_id": "x", "started_at": Infinity}',
    '{"run_id": "x\\n# injected", "started_at": 1}', '{"settings": [1, 2]}',
    '{"started_at": "yesterday"}', '{"status": 7}',
])
def test_a_damaged_run_json_is_a_one_line_error(tmp_path: Path, content: str) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=5))
    (tmp_path / "run" / "run.json").write_text(content)
    done = report(tmp_path / "run")
    if content == "{}":  # an empty object is a run that never started: nothing to judge
        assert done.returncode == 3, done.stdout + done.stderr
        return
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_cut_or_corrupt_latency_line_is_skipped_and_counted(tmp_path: Path) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=10))
    rewrite_as_jsonl(tmp_path / "run")  # a run of an older perfkit (latency.bin: test_digest)
    latency = tmp_path / "run" / "latency.jsonl"
    lines = latency.read_text().splitlines()
    lines.insert(3, '{"t": 1, "name": "GET /x", "count": "many"')  # cut short
    lines.insert(5, '{"t": 1, "name": "GET /x", "count": 3, "failures": 0, "hist": 7}')
    latency.write_text("\n".join(lines) + "\n")
    done = report(tmp_path / "run")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_lines"] == 2
    # Lines after the damage still count: every bucket but the two bad lines.
    total = sum(e["count"] for e in summary["endpoints"].values())
    assert total > 0
    assert 'id="skipped-lines"' in (tmp_path / "run" / "report.html").read_text()


def test_a_histogram_that_cannot_be_decoded_is_a_one_line_error(tmp_path: Path) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=5))
    rewrite_as_jsonl(tmp_path / "run")
    latency = tmp_path / "run" / "latency.jsonl"
    record = json.loads(latency.read_text().splitlines()[0])
    record["hist"] = "bm90IGEgaGlzdG9ncmFt"  # base64 of "not a histogram"
    latency.write_text(latency.read_text() + json.dumps(record) + "\n")
    done = report(tmp_path / "run")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "latency.jsonl" in done.stderr


OUTPUTS = ("report.html", "summary.json", "summary.md", "junit.xml", "run.json")


def test_outputs_never_write_through_a_symlink(tmp_path: Path) -> None:
    # Every output a link to a file of its own outside the run, all in one `perfkit report`
    # (a report costs seconds of CPU; one per output was 4 of the file's slowest tests).
    make_run(tmp_path / "run", RunSpec(duration_s=5))
    kept = {}
    for output in OUTPUTS:
        outside = tmp_path / f"outside-{output}"
        link = tmp_path / "run" / output
        # run.json's link target is what the run reads: keep it valid
        outside.write_text(link.read_text() if output == "run.json" else "precious")
        kept[output] = outside.read_text()
        link.unlink(missing_ok=True)
        link.symlink_to(outside)
    report(tmp_path / "run")
    for output in OUTPUTS:
        # the file it pointed to is untouched, and the link replaced by the run's own file
        assert (tmp_path / f"outside-{output}").read_text() == kept[output], output
        assert not (tmp_path / "run" / output).is_symlink(), output


def test_a_baseline_refuses_symlinked_files(tmp_path: Path) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=5))
    (tmp_path / "run" / "summary.json").unlink(missing_ok=True)
    (tmp_path / "run" / "summary.json").symlink_to("/etc/passwd")
    done = subprocess.run([*PERFKIT, "baseline", "save", str(tmp_path / "run"), "--name", "b",
                           "--reports-dir", str(tmp_path / "reports")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "symbolic link" in done.stderr
    assert not (tmp_path / "reports" / "baselines" / "b").exists()


def test_a_baseline_name_is_matched_whole(tmp_path: Path) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=5))
    done = subprocess.run([*PERFKIT, "baseline", "save", str(tmp_path / "run"), "--name",
                           "main\n", "--reports-dir", str(tmp_path / "reports")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "bad baseline name" in done.stderr


def test_secrets_in_urls_stay_out_of_the_artefacts(tmp_path: Path) -> None:
    from perfkit.redaction import redact_url

    assert redact_url("http://user:pw@host:8000/api?token=abc&page=2") == \
        "http://***@host:8000/api?token=***&page=2"
    assert redact_url("https://hooks.example/T0/B1?sig=xyz") == \
        "https://hooks.example/T0/B1?sig=***"
