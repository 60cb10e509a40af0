"""Where an option's value comes from when the command line does not give it.

Precedence, highest first: the command line, `PERFKIT_*` environment variables (click reads
them), `perfkit.toml` (or `[tool.perfkit]` in pyproject.toml) in the working directory, the
`locust.conf` there (options perfkit shares with Locust), then the defaults. The files become
click's `default_map`, so every option of every command can come from them:

    # perfkit.toml: top-level keys apply to load, stress, endurance and regression,
    users = 50                 # a [COMMAND] table to one command
    duration = "5m"
    [worker]
    master = "10.0.0.1:5557"

Keys are an option's long names (`spawn-rate` or `spawn_rate`, `run-time` for `duration`).
A key no command knows is a ConfigError naming the file and line. `locust.conf` keys perfkit
does not have are handed to the locustfile's own parser, as Locust would.
"""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

PERFKIT_TOML = "perfkit.toml"
PYPROJECT = "pyproject.toml"
LOCUST_CONF = "locust.conf"

# Locust's option names for what perfkit calls otherwise.
LOCUST_NAMES = {"locustfile": "scenario", "host": "target", "run_time": "duration",
                "processes": "workers", "u": "users", "r": "spawn_rate", "t": "duration",
                "num_users": "users"}
_LINE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*[=:]\s*(.*?)\s*$")
_TRUE = ("true", "yes", "on", "1")


@dataclass
class Sources:
    """click's default_map, where each of its values came from, and the locustfile
    arguments a locust.conf gives."""

    default_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    locustfile_args: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def option_names(params: dict[str, list[tuple[str, list[str]]]]) -> dict[str, dict[str, str]]:
    """{command: {spelling: parameter name}} from {command: [(name, ["--spawn-rate", ...])]}."""
    names: dict[str, dict[str, str]] = {}
    for command, options in params.items():
        table = names.setdefault(command, {})
        for name, opts in options:
            table[name] = name
            for opt in opts:
                if opt.startswith("--"):
                    table[opt[2:].replace("-", "_")] = name
    return names


def read_sources(directory: Path, params: dict[str, list[tuple[str, list[str]]]],
                 load_commands: tuple[str, ...]) -> Sources:
    """The default_map for the commands described by `params` (see option_names), from the
    files in `directory`; `load_commands` are those a locust.conf applies to."""
    names = option_names(params)
    sources = Sources()
    conf = directory / LOCUST_CONF
    if conf.is_file():
        _apply_locust_conf(conf, names, load_commands, sources)
    table, origin = _perfkit_table(directory)
    if table is not None:
        sources.files.append(origin)
        _apply_perfkit_table(table, origin, names, load_commands, sources)
    return sources


def _perfkit_table(directory: Path) -> tuple[dict[str, Any] | None, str]:
    for path, key in ((directory / PERFKIT_TOML, None), (directory / PYPROJECT, "tool")):
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if key is None:
            return data, str(path)
        table = data.get("tool", {}).get("perfkit")
        if table is not None:
            return table, f"{path} [tool.perfkit]"
    return None, ""


def _apply_perfkit_table(table: dict[str, Any], origin: str, names: dict[str, dict[str, str]],
                         load_commands: tuple[str, ...], sources: Sources) -> None:
    for key, value in table.items():
        if isinstance(value, dict) and key in names:
            for sub_key, sub_value in value.items():
                _set(sources, key, sub_key, sub_value, f"{origin} [{key}]", names, strict=True)
            continue
        spelled = key.replace("-", "_")
        found = [command for command in load_commands if spelled in names.get(command, {})]
        if not found:
            elsewhere = [command for command in names if spelled in names[command]]
            hint = (f"; put it in a [{elsewhere[0]}] table" if elsewhere else
                    " (perfkit COMMAND --help lists every option)")
            raise ConfigError(f"{origin}: {key!r} is not an option of "
                              f"{', '.join(load_commands)}{hint}")
        for command in found:
            _set(sources, command, key, value, origin, names, strict=True)


def _set(sources: Sources, command: str, key: str, value: Any, origin: str,
         names: dict[str, dict[str, str]], strict: bool) -> bool:
    spelled = key.replace("-", "_")
    name = names[command].get(spelled) or names[command].get(LOCUST_NAMES.get(spelled, ""))
    if name is None:
        if strict:
            raise ConfigError(f"{origin}: perfkit {command} has no option {key!r}")
        return False
    sources.default_map.setdefault(command, {})[name] = value
    sources.origins[(command, name)] = origin
    return True


def _apply_locust_conf(path: Path, names: dict[str, dict[str, str]],
                       load_commands: tuple[str, ...], sources: Sources) -> None:
    """configargparse's format: `key = value` lines; `[section]` headers and `#` comments
    are skipped, `[a, b]` is a list, true/false a flag."""
    sources.files.append(str(path))
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;[":
            continue
        match = _LINE.match(stripped)
        if not match:
            raise ConfigError(f"{path}:{lineno}: expected key = value")
        key, text = match.group(1), match.group(2)
        value: Any = [v.strip() for v in text.strip("[]").split(",") if v.strip()] \
            if text.startswith("[") else text
        known = [_set(sources, command, key, value, f"{path}:{lineno}", names, strict=False)
                 for command in load_commands if command in names]
        if any(known):
            continue
        # Not perfkit's: the locustfile's own argument, or one of Locust's that perfkit
        # does not need (headless, csv, ...), which Locust's parser accepts and perfkit ignores.
        if isinstance(value, list):
            sources.locustfile_args += [f"--{key}", *value]
        elif value.lower() in _TRUE:
            sources.locustfile_args.append(f"--{key}")
        elif value.lower() not in ("false", "no", "off", "0"):
            sources.locustfile_args.append(f"--{key}={value}")
