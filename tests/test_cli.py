import subprocess
import sys

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
