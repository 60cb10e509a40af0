"""options.py's table is the one declaration of every option: each option of every command is
reachable from every source (command line, PERFKIT_* and LOCUST_* variables, perfkit.toml,
Locust's config files, perfkit.load) with the same value and the same default; and every
option of the installed Locust has exactly one fate (honoured, refused with exit 2, or ignored
with a warning), listed in the README.

In-process: click parses, nothing loads (Locust, which patches the interpreter, is read in a
process of its own).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from perfkit import cli
from perfkit.errors import ConfigError
from perfkit.options import (
    CONFIGURED_BY_FILES,
    HONOURED,
    IGNORED,
    LOAD,
    OPTIONS,
    REFUSED,
    Option,
    default_value,
    env_names,
    options_of,
    parse_options,
)
from perfkit.settings_sources import read_sources

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = sorted({command for option in OPTIONS for command in option.commands})

# Locust's own parser, as `locust` builds it (without a locustfile's arguments).
LOCUST_ACTIONS = """
import json
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments

parser = get_empty_argument_parser()
setup_parser_arguments(parser)
print(json.dumps([{"strings": a.option_strings, "dest": a.dest,
                   "env": getattr(a, "env_var", None), "kind": type(a).__name__}
                  for a in parser._actions]))
"""

# What a command needs besides the option under test: its arguments, its required options.
REQUIRED_ARGS = {"bench": ["http://127.0.0.1:9"], "report": ["run"], "compare": ["a", "b"],
                 "baseline save": ["run", "--name", "n"], "history import": ["."],
                 "regression": ["--baseline", "b"], "monitor": ["--pid", "1"],
                 "profile": ["--pid", "1"], "worker": ["--master", "m"]}


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set what they read (conftest's PERFKIT_HISTORY=off among them)."""
    for name in list(os.environ):
        if name.startswith(("PERFKIT_", "LOCUST_")):
            monkeypatch.delenv(name)


def command_of(name: str) -> click.Command:
    command: Any = cli.cli
    for part in name.split():
        command = command.commands[part]
    return command  # type: ignore[no-any-return]


def parse(command: str, args: list[str], default_map: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    ctx = command_of(command).make_context(command.split()[-1], list(args),  # click eats it
                                           default_map=default_map)
    return dict(ctx.params)


def required_args(command: str, option: Option) -> list[str]:
    """REQUIRED_ARGS of `command`, less the option under test: its source gives it."""
    args = list(REQUIRED_ARGS.get(command, []))
    for spelling in option.spellings:
        if spelling in args:
            del args[args.index(spelling):args.index(spelling) + 2]
    return args


def sample(option: Option, tmp_path: Path) -> str | None:
    """A value of `option` other than its default, as a user writes it (None: a switch)."""
    kind = option.type
    if option.flag:
        return None
    if option.convert is not None:
        name = option.convert.__name__
        return {"_percent": "7%", "_mb_per_h": "7MB/h"}.get(name, "7s")
    if isinstance(kind, click.Choice):
        return str(kind.choices[-1])
    if isinstance(kind, click.IntRange):
        low = int(kind.min if kind.min is not None else 0)
        return str(low + 1 if kind.max is not None and low + 3 > kind.max else low + 3)
    if isinstance(kind, click.FloatRange):
        low = float(kind.min if kind.min is not None else 0.0)
        high = float(kind.max if kind.max is not None else low + 5.0)
        return str((low + high) / 2)
    if kind is int:
        return "7"
    if isinstance(kind, click.Path) and kind.exists:
        body = tmp_path / "body.txt"
        body.write_text("x")
        return str(body)
    if isinstance(kind, click.Path):
        return str(tmp_path / "some-path")
    if type(kind).__name__ == "FaultText":
        return "at=7s,do=true"
    if type(kind).__name__ == "JsonText":
        return '{"user_class_name": "A"}'
    return "x1"


def written(option: Option, text: str | None) -> Any:
    """The sample as a config file holds it."""
    if option.flag:
        return True
    return [text] if option.multiple else text


def toml_text(command: str, key: str, value: Any) -> str:
    line = f"{key} = {json.dumps(value)}\n"
    if command in CONFIGURED_BY_FILES:
        return line
    return f"[{command.replace(' ', '.')}]\n{line}"


def conf_text(key: str, value: Any) -> str:
    if isinstance(value, list):  # JSON where an item holds a comma (a --fault), as Locust
        return f"{key} = {json.dumps(value)}\n" if any("," in v for v in value) \
            else f"{key} = [{', '.join(value)}]\n"
    return f"{key} = {'true' if value is True else value}\n"


def pairs() -> list[tuple[str, Option]]:
    """(command, option) to try every source on: the load commands share one row each (tried
    on load), the others' own rows on their command."""
    return [(command, option) for command in COMMANDS for option in options_of(command)
            if option.name != "version" and (command == "load" or "load" not in option.commands)]


def test_every_command_takes_its_rows_spellings_variables_and_defaults() -> None:
    """The click commands are the table: each row's spellings (Locust's included), its
    variables and its default (after conversion), for every command that takes it."""
    for command in COMMANDS:
        params = {p.name: p for p in command_of(command).params
                  if isinstance(p, click.Option)}
        defaults = parse(command, REQUIRED_ARGS.get(command, []))
        api_defaults = parse_options(
            command, {"baseline_ref": "b"} if command == "regression" else {}
        )[0] if command in LOAD else None
        for option in options_of(command):
            param = params[option.name]
            assert set(param.opts) == set(option.spellings), (command, option.name)
            assert param.envvar == env_names(option, command), (command, option.name)
            if option.name == "version" or (command, option.name) in (
                    ("regression", "baseline_ref"), ("baseline save", "name"),
                    ("monitor", "pid"), ("profile", "pid"), ("worker", "master")):
                continue
            assert defaults[option.name] == default_value(command, option.name), \
                (command, option.name)
            if api_defaults is not None:
                assert api_defaults[option.name] == defaults[option.name], (command, option.name)
    # One row per name and spelling in a command.
    for command in COMMANDS:
        names = [o.name for o in options_of(command)]
        spellings = [s for o in options_of(command) for s in o.spellings]
        assert len(names) == len(set(names)) and len(spellings) == len(set(spellings)), command


@pytest.mark.parametrize("command", sorted({c for c, _ in pairs()}))
def test_every_option_is_reachable_from_every_source_with_one_meaning(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """For each option: what the command line makes of a value, PERFKIT_*, LOCUST_*,
    perfkit.toml, Locust's config files (locust.conf, ~/.locust.conf, [tool.locust],
    --config) and perfkit.load make of it too; Locust's refused options are refused from
    each, its ignored ones warned about from each."""
    for option in (o for c, o in pairs() if c == command):
        text = sample(option, tmp_path)
        base = required_args(command, option)
        spelling = option.spellings[0]
        cli_args = [*base, spelling] + ([] if text is None else [text])
        value_text = "true" if text is None else text
        sources: dict[str, Any] = {"command line": lambda a=cli_args: parse(command, a)}
        for name in env_names(option, command):
            def from_env(name: str = name, value: str = value_text,
                         base: list[str] = base) -> dict[str, Any]:
                with monkeypatch.context() as patch:
                    patch.setenv(name, value)
                    return parse(command, base)
            sources[f"environment {name}"] = from_env
        files = {"perfkit.toml": ("perfkit.toml", toml_text(
            command, option.long_names[0], written(option, text)))}
        if command in CONFIGURED_BY_FILES:
            key, value = option.long_names[-1], written(option, text)
            files.update({"locust.conf": ("locust.conf", conf_text(key, value)),
                          "~/.locust.conf": ("home/.locust.conf", conf_text(key, value)),
                          "[tool.locust]": ("pyproject.toml",
                                            f"[tool.locust]\n{toml_text('load', key, value)}"),
                          "--config FILE": ("other.conf", conf_text(key, value))})
        for label, (name, content) in files.items():
            def from_file(name: str = name, content: str = content,
                          base: list[str] = base) -> dict[str, Any]:
                directory = tmp_path / f"files-{len(list(tmp_path.iterdir()))}"
                (directory / "home").mkdir(parents=True)
                (directory / name).write_text(content)
                config = directory / "other.conf" if name == "other.conf" else None
                found = read_sources(directory, config, home=directory / "home")
                return parse(command, base, found.defaults_of(command))
            sources[label] = from_file
        if option.api and command == "load":
            given = True if text is None else [text] if option.multiple else text
            sources["perfkit.load"] = lambda g=given, n=option.name: parse_options(
                command, {n: g})[0]
        check_sources(command, option, sources, capsys)


def check_sources(command: str, option: Option, sources: dict[str, Any],
                  capsys: pytest.CaptureFixture[str]) -> None:
    where = f"{command} {option.name}"
    if option.fate == REFUSED:
        for label, read in sources.items():
            with pytest.raises((click.UsageError, ConfigError), match="not perfkit's"):
                read()
                pytest.fail(f"{where} from {label}: not refused")
        assert option.reason, where
        return
    if option.name == "config":  # a config file cannot name another
        for label in ("perfkit.toml", "locust.conf", "~/.locust.conf", "[tool.locust]",
                      "--config FILE"):
            with pytest.raises(ConfigError, match="config names a Locust config file"):
                sources.pop(label)()
    expected = sources.pop("command line")()[option.name]
    assert expected not in (None, (), False), where
    if option.fate == IGNORED:
        assert "is ignored" in capsys.readouterr().err, where
    for label, read in sources.items():
        assert read()[option.name] == expected, f"{where} from {label}"
        if option.fate == IGNORED:
            assert "is ignored" in capsys.readouterr().err, f"{where} from {label}"


def test_perfkit_load_converts_python_values_as_the_command_line_does() -> None:
    values, given = parse_options("load", {"users": 3, "duration": 90, "tags": "a",
                                           "kpi": Path("k.toml"), "fast": True,
                                           "warmup": "5s"})
    assert (values["users"], values["duration"], values["tags"], values["warmup"]) == \
        (3, 90.0, ("a",), 5.0)
    assert values["kpi"] == Path("k.toml") and values["fast"] is True
    assert given == {"users", "duration", "tags", "kpi", "fast", "warmup"}
    with pytest.raises(TypeError, match="did you mean 'users'"):
        parse_options("load", {"usres": 3})
    with pytest.raises(ConfigError, match="users"):
        parse_options("load", {"users": 0})


def locust_actions() -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-c", LOCUST_ACTIONS], capture_output=True,
                          text=True, timeout=60, check=True)
    return list(json.loads(done.stdout))


def test_every_locust_option_has_one_fate_and_the_readme_says_which() -> None:
    """Walks the installed Locust's own parser: each of its options is one row of the table
    (honoured with Locust's spellings and variable, refused, or ignored), or perfkit's --help,
    or a spelling perfkit uses for its own option (--profile, explained in the README). A
    Locust release with a new option fails here until the table gives it a fate."""
    rows = options_of("load")
    readme = README.read_text("utf-8")
    section = readme[readme.index("### Locust compatibility"):]
    section = section[:section.index("\n### ", 10)]
    fates: dict[str, str] = {}
    for action in locust_actions():
        strings = set(action["strings"])
        if action["kind"] == "_HelpAction":
            fates["--help"] = HONOURED
            continue
        if not strings:  # Locust's only positional: the User classes
            matches = [o for o in rows if o.name == action["dest"]]
            assert matches and matches[0].locust_env == "LOCUST_USER_CLASSES"
        else:
            matches = [o for o in rows if set(o.locust) == strings] + \
                      [o for o in rows if o.locust_other and strings <= set(o.flags)]
            assert len(matches) == 1, f"Locust's {sorted(strings)}: {len(matches)} rows"
            if not matches[0].locust_other:
                assert matches[0].locust_env == action["env"], sorted(strings)
        option = matches[0]
        fates[max(strings, key=len) if strings else "USERCLASS"] = \
            "other" if option.locust_other else option.fate
        for spelling in strings or {"USERCLASS"}:
            if spelling.startswith("--") or not strings:
                listed = re.search(rf"[`/]{re.escape(spelling)}[`/ ]", section)
                assert listed, f"README does not list Locust's {spelling}"
    # No row claims a spelling Locust does not have.
    known = {s for action in locust_actions() for s in action["strings"]}
    assert {s for o in rows for s in o.locust} <= known
    assert {fate for fate in fates.values()} == {HONOURED, REFUSED, IGNORED, "other"}


@pytest.mark.parametrize("option", [o for o in options_of("load") if o.fate == REFUSED],
                         ids=lambda o: o.name)
def test_a_refused_locust_option_names_perfkits_way(option: Option) -> None:
    for spelling in option.spellings:
        with pytest.raises(click.UsageError) as refused:
            parse("load", [spelling] + ([] if option.flag else ["1"]))
        assert refused.value.format_message() == \
            f"Locust's {max(option.spellings, key=len)} is not perfkit's: {option.reason}"


def test_version_and_help_on_a_load_command(capsys: pytest.CaptureFixture[str]) -> None:
    for spelling in ("-V", "--version"):
        with pytest.raises(click.exceptions.Exit):
            parse("load", [spelling])
        assert re.match(r"perfkit \S+, locust 2\.", capsys.readouterr().out)
    with pytest.raises(click.exceptions.Exit):
        parse("load", ["--help"])
    assert "--run-time" in capsys.readouterr().out


def test_a_refusal_is_one_line_and_exit_2_before_any_run(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "perfkit", "load", "--worker", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "perfkit worker --master HOST:PORT" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [o for o in options_of("load") if o.fate == IGNORED],
                         ids=lambda o: o.name)
def test_an_ignored_locust_option_warns(option: Option,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    parse("load", [option.spellings[0]] + ([] if option.flag else ["1"]))
    warning = capsys.readouterr().err.strip()
    assert warning == (f"perfkit: warning: Locust's {max(option.spellings, key=len)} is "
                       f"ignored: {option.reason}")


def test_perfkit_config_shows_the_source_of_each_value(tmp_path: Path) -> None:
    """Precedence, from one run of `perfkit config`: command line > PERFKIT_* > LOCUST_* >
    --config FILE > perfkit.toml > locust.conf > ~/.locust.conf > default."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".locust.conf").write_text("arrivals = poisson\nrequest-timeout = 9s\n")
    (tmp_path / "locust.conf").write_text("request-timeout = 8s\nstop-timeout = 8s\n")
    (tmp_path / "perfkit.toml").write_text('stop-timeout = "7s"\nspawn-rate = 7\n')
    (tmp_path / "other.conf").write_text("spawn-rate = 6\nusers = 6\n")
    done = subprocess.run(
        [sys.executable, "-m", "perfkit", "config", "load", "--config", "other.conf", "-u",
         "2", "--mine", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "HOME": str(home), "PERFKIT_EXPECT_WORKERS": "4",
             "LOCUST_EXPECT_WORKERS": "5", "LOCUST_RUN_TIME": "2m",
             "PYTHONPATH": str(Path.cwd())})
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert lines["users"] == ["2", "command", "line"]
    assert lines["expect_workers"] == ["4", "environment", "PERFKIT_EXPECT_WORKERS"]
    assert lines["duration"] == ["120.0", "environment", "LOCUST_RUN_TIME"]
    assert lines["spawn_rate"] == ["6.0", "other.conf:1"]
    assert lines["stop_timeout"] == ["7.0", str(tmp_path / "perfkit.toml")]
    assert lines["request_timeout"] == ["8.0", f"{tmp_path / 'locust.conf'}:1"]
    assert lines["arrivals"] == ["poisson", f"{home / '.locust.conf'}:1"]
    assert lines["workers"] == ["0", "default"]
    assert "locustfile arguments     --mine 1" in done.stdout
    assert re.search(r"files read: .*\.locust\.conf.*locust\.conf.*perfkit\.toml.*other\.conf",
                     done.stdout.splitlines()[0])


def test_the_readme_documents_every_option_of_perfkit_load() -> None:
    readme = README.read_text("utf-8")
    section = readme[readme.index("## Python API"):readme.index("## Layout")]
    for option in options_of("load"):
        if option.api and option.fate == HONOURED:
            assert f"| `{option.name}` |" in section, option.name
