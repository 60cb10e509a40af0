import subprocess
import sys
from pathlib import Path

import pytest

PERFKIT = [sys.executable, "-m", "perfkit"]


def run_perfkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PERFKIT, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands() -> None:
    result = run_perfkit("--help")
    assert result.returncode == 0
    for command in ["load", "serve"]:
        assert f"  {command} " in result.stdout


def test_bad_duration_is_a_one_line_error_with_exit_code_2() -> None:
    result = run_perfkit("load", "--duration", "soon")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bad duration" in result.stderr


# Runs perfkit's CLI with the named top-level modules made unimportable, as where an extra is
# not installed: a finder ahead of every other one says they do not exist.
WITHOUT_MODULES = """
import sys

blocked = set(sys.argv[1].split(","))


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
sys.argv = ["perfkit", *sys.argv[2:]]
from perfkit.cli import main

main()
"""


@pytest.mark.parametrize(("modules", "args", "extra"), [
    ("psycopg", ["load", "--db-url", "postgresql://postgres@127.0.0.1/research"], "postgres"),
    ("psycopg", ["load", "--history", "postgresql://postgres@127.0.0.1/history"], "postgres"),
    ("psycopg", ["history", "list", "--history", "postgresql://postgres@127.0.0.1/h"],
     "postgres"),
    ("opentelemetry", ["load", "--otlp-endpoint", "http://127.0.0.1:4318"], "otlp"),
    ("memray", ["profile", "--pid", "1", "--memory"], "memory"),
    ("asyncpg", ["serve", "--port", "0", "--database-url",
                 "postgresql+asyncpg://postgres@127.0.0.1/research"], "postgres"),
], ids=["db-url", "history-load", "history-list", "otlp", "profile-memory", "serve-postgres"])
def test_a_missing_extra_is_one_line_and_exit_2_before_any_load(
        modules: str, args: list[str], extra: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    if args[0] == "load":
        # Nothing listens on the discard port: were the extra checked after the target,
        # the error would be another one.
        args = [*args, "--target", "http://127.0.0.1:9", "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", WITHOUT_MODULES, modules, *args],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"pip install 'perfkit[{extra}]'" in result.stderr
    assert f"No module named '{modules}" in result.stderr
    assert not out.exists()  # no run directory: no load started
