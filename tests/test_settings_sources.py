"""Where an option's value comes from: command line > PERFKIT_* > LOCUST_* > --config >
perfkit.toml > Locust's config files > defaults, shown by `perfkit config`; and Locust's time
spans."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perfkit.errors import ConfigError
from perfkit.settings_sources import read_sources
from perfkit.units import parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("2h", 7200.0), ("1h30m", 5400.0),
    ("3h30m10s", 12610.0), ("500ms", 0.5), ("1.5s", 1.5), ("1h 30m", 5400.0)])
def test_durations_are_locust_time_spans_and_milliseconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "1h1h", "m", "5 6", "-3s"])
def test_a_bad_duration_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="bad duration"):
        parse_duration(text)


def test_perfkit_toml_outranks_locust_conf_and_passes_unknown_keys_on(tmp_path: Path) -> None:
    (tmp_path / "locust.conf").write_text(
        "# Locust's own file\nusers = 3\nspawn-rate = 2\nrun-time = 1h30m\nheadless = true\n"
        "greeting = hello\ntags = [a, b]\n")
    (tmp_path / "perfkit.toml").write_text('users = 7\n[worker]\nmaster = "10.0.0.1:5557"\n')
    sources = read_sources(tmp_path, home=tmp_path)
    expected = {"users": 7, "spawn_rate": "2", "duration": "1h30m", "headless": True,
                "tags": ["a", "b"]}
    for command in ("load", "stress", "endurance", "regression"):
        assert sources.default_map[command] == expected
    assert sources.default_map["worker"] == {"master": "10.0.0.1:5557"}
    assert "ab" not in sources.default_map  # its arms are set apart
    assert sources.origins[("load", "users")] == str(tmp_path / "perfkit.toml")
    assert sources.origins[("load", "spawn_rate")] == f"{tmp_path / 'locust.conf'}:3"
    # Not perfkit's: the locustfile's own, for its parser.
    assert sources.locustfile_config == [("greeting", "hello")]


def test_tool_perfkit_in_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.perfkit]\n'
                                             '"spawn-rate" = 4\n')
    assert read_sources(tmp_path, home=tmp_path).defaults_of("load") == {"spawn_rate": 4}


def test_an_unknown_key_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "perfkit.toml").write_text("usres = 7\n")
    with pytest.raises(ConfigError, match="perfkit.toml: 'usres' is not an option"):
        read_sources(tmp_path, home=tmp_path)
    (tmp_path / "perfkit.toml").write_text('connect-timeout = "5s"\n')
    with pytest.raises(ConfigError, match=r"put it in a \[worker\] table"):
        read_sources(tmp_path, home=tmp_path)


def test_perfkit_config_shows_each_value_and_its_source(tmp_path: Path) -> None:
    (tmp_path / "perfkit.toml").write_text('users = 7\nduration = "1h30m"\n')
    (tmp_path / "locust.conf").write_text("spawn-rate = 3\nhost = http://10.9.9.9:80\n")
    done = subprocess.run(
        [sys.executable, "-m", "perfkit", "config", "load", "-r", "9", "--mine", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PERFKIT_USERS": "12", "PYTHONPATH": str(Path.cwd())})
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert lines["users"].split()[1:] == ["12", "environment", "PERFKIT_USERS"]
    assert lines["spawn_rate"].split()[1:] == ["9.0", "command", "line"]
    assert lines["duration"].split()[1:] == ["5400.0", str(tmp_path / "perfkit.toml")]
    assert lines["target"].split()[1:] == ["http://10.9.9.9:80", f"{tmp_path}/locust.conf:2"]
    assert lines["workers"].split()[1:] == ["0", "default"]
    assert "--mine 1" in done.stdout  # the locustfile's own argument


def test_version_names_perfkit_and_locust() -> None:
    done = subprocess.run([sys.executable, "-m", "perfkit", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("perfkit ") and ", locust 2." in done.stdout
