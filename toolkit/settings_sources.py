"""Where an option's value comes from when the command line does not give it.

Precedence, highest first:
1. the command line (or `perfkit.load`'s keyword arguments);
2. the environment: `PERFKIT_*`, then Locust's `LOCUST_*` for the options Locust has (click
   reads them, options.env_names);
3. `--config FILE` (or `PERFKIT_CONFIG`): a Locust config file named for this run;
4. `perfkit.toml`, or `[tool.perfkit]` in pyproject.toml, in the working directory;
5. Locust's own config files, as Locust reads them, the later outranking the earlier:
   `~/.locust.conf`, `locust.conf`, `[tool.locust]` in pyproject.toml;
6. the defaults (options.py).
Locust's own order among its sources is the same (command line > environment > config files).

The files become click's `default_map`, so every option of every command can come from them:

    # perfkit.toml: top-level keys apply to load, stress, endurance and regression,
    users = 50                 # a [COMMAND] table to one command ([history.analyze] ...)
    duration = "5m"
    [worker]
    master = "10.0.0.1:5557"

Keys are an option's name or long spellings, perfkit's or Locust's (`spawn-rate`,
`spawn_rate`, `run-time`). In perfkit.toml a key no command knows is a ConfigError naming the
file; in a Locust config file it is the locustfile's own argument, handed to its parser as
Locust does.
"""

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import CONFIGURED_BY_FILES, OPTIONS, Option

PERFKIT_TOML = "perfkit.toml"
PYPROJECT = "pyproject.toml"
LOCUST_CONF = "locust.conf"
HOME_LOCUST_CONF = ".locust.conf"
_LINE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*[=:]\s*(.*?)\s*$")
_TRUE = ("true", "yes", "on", "1")


@dataclass
class Sources:
    """click's default_map, where each of its values came from, and the items of Locust's
    config files that are the locustfile's own arguments ((key, value), for its parser)."""

    default_map: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    locustfile_config: list[tuple[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def defaults_of(self, command: str) -> dict[str, Any]:
        """The default_map of `command` ("history analyze": nested as click looks it up)."""
        table: Any = self.default_map
        for part in command.split():
            table = table.get(part, {}) if isinstance(table, dict) else {}
        return table if isinstance(table, dict) else {}


def _spellings() -> dict[str, dict[str, str]]:
    """{command: {key: option name}}: every name and long spelling, with - and _ alike."""
    names: dict[str, dict[str, str]] = {}
    for option in OPTIONS:
        for command in option.commands:
            table = names.setdefault(command, {})
            for key in (option.name, *option.long_names):
                table[key.replace("-", "_")] = option.name
    return names


def read_sources(directory: Path, config_file: Path | str | None = None,
                 home: Path | None = None) -> Sources:
    """The default_map of every command from the files in `directory` (and `home`'s
    ~/.locust.conf), and from `config_file`, as their precedence says (module docstring)."""
    names = _spellings()
    sources = Sources()
    home = Path.home() if home is None else home
    for path in (home / HOME_LOCUST_CONF, directory / LOCUST_CONF):
        if path.is_file():
            _apply_locust_items(_read_conf(path), str(path), names, sources)
    pyproject = directory / PYPROJECT
    locust_table = _toml_table(pyproject, ("tool", "locust"))
    if locust_table is not None:
        origin = f"{pyproject} [tool.locust]"
        _apply_locust_items(_locust_toml_items(locust_table, origin), origin, names, sources)
    table, origin = _perfkit_table(directory)
    if table is not None:
        sources.files.append(origin)
        _apply_perfkit_table(table, origin, names, sources)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        if path.suffix == ".toml":
            origin = f"{path} [tool.locust]"
            items = _locust_toml_items(_toml_table(path, ("tool", "locust")) or {}, origin)
        else:
            origin, items = str(path), _read_conf(path)
        _apply_locust_items(items, origin, names, sources)
    return sources


def _toml_table(path: Path, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data: Any = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else None


def _perfkit_table(directory: Path) -> tuple[dict[str, Any] | None, str]:
    path = directory / PERFKIT_TOML
    if path.is_file():
        return _toml_table(path, ()), str(path)
    table = _toml_table(directory / PYPROJECT, ("tool", "perfkit"))
    return table, f"{directory / PYPROJECT} [tool.perfkit]"


def _apply_perfkit_table(table: dict[str, Any], origin: str, names: dict[str, dict[str, str]],
                         sources: Sources) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            sub = [f"{key} {name}" for name in value if f"{key} {name}" in names]
            if key in names and not sub:
                for sub_key, sub_value in value.items():
                    _set(sources, key, sub_key, sub_value, f"{origin} [{key}]", names)
                continue
            if sub and len(sub) == len(value):
                for command in sub:
                    nested = value[command.split()[1]]
                    for sub_key, sub_value in nested.items():
                        _set(sources, command, sub_key, sub_value,
                             f"{origin} [{command.replace(' ', '.')}]", names)
                continue
            raise ConfigError(f"{origin}: [{key}] is not a command")
        if key.replace("-", "_") == "config":
            raise ConfigError(f"{origin}: config names a Locust config file for one run: "
                              f"give it as --config FILE or PERFKIT_CONFIG")
        spelled = key.replace("-", "_")
        found = [c for c in CONFIGURED_BY_FILES if spelled in names.get(c, {})]
        if not found:
            elsewhere = [c for c in names if spelled in names[c]]
            hint = (f"; put it in a [{elsewhere[0].replace(' ', '.')}] table" if elsewhere
                    else " (perfkit COMMAND --help lists every option)")
            raise ConfigError(f"{origin}: {key!r} is not an option of "
                              f"{', '.join(CONFIGURED_BY_FILES)}{hint}")
        for command in found:
            _set(sources, command, key, value, origin, names)


def _set(sources: Sources, command: str, key: str, value: Any, origin: str,
         names: dict[str, dict[str, str]]) -> None:
    name = names[command].get(key.replace("-", "_"))
    if name is None:
        raise ConfigError(f"{origin}: perfkit {command} has no option {key!r}")
    option = next(o for o in OPTIONS if o.name == name and command in o.commands)
    table = sources.default_map
    for part in command.split():
        table = table.setdefault(part, {})
    table[name] = _click_value(option, value)
    sources.origins[(command, name)] = origin


def _click_value(option: Option, value: Any) -> Any:
    """A file's value as click takes it from a default_map: a repeatable option a list
    (one text is one value, as configargparse gives it), a switch from Locust's words."""
    if option.multiple:
        return list(value) if isinstance(value, list | tuple) else [value]
    if option.flag and isinstance(value, str):
        return value.strip().lower() in _TRUE
    return value


def _read_conf(path: Path) -> list[tuple[str, Any, str]]:
    """configargparse's format, as Locust reads locust.conf: `key = value` lines; `[section]`
    headers and `#`/`;` comments skipped, `[a, b]` a list. (key, value, origin) each."""
    items: list[tuple[str, Any, str]] = []
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;[":
            continue
        match = _LINE.match(stripped)
        if not match:
            raise ConfigError(f"{path}:{lineno}: expected key = value")
        key, value = match.group(1), match.group(2)
        items.append((key, _conf_list(value) if value.startswith("[") and value.endswith("]")
                      else value, f"{path}:{lineno}"))
    return items


def _conf_list(text: str) -> list[str]:
    """`[a, b]` or JSON, as configargparse reads a list (JSON objects kept as JSON text)."""
    try:
        items = json.loads(text)
    except ValueError:
        return [v.strip() for v in text[1:-1].split(",") if v.strip()]
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


def _locust_toml_items(table: dict[str, Any], origin: str) -> list[tuple[str, Any, str]]:
    """[tool.locust] as Locust's TOML parser gives it: lists stay lists, other values text."""
    return [(key, value if isinstance(value, list) else str(value), origin)
            for key, value in table.items() if value is not None]


def _apply_locust_items(items: list[tuple[str, Any, str]], file: str,
                        names: dict[str, dict[str, str]], sources: Sources) -> None:
    """A Locust config file's items: the options perfkit has (its own, or Locust's that it
    honours, refuses or ignores) go to the load commands; the rest are the locustfile's own
    arguments, read by its parser as Locust reads them (below the environment)."""
    sources.files.append(file)
    for key, value, origin in items:
        spelled = key.replace("-", "_")
        if spelled == "config":
            raise ConfigError(f"{origin}: config names a Locust config file for one run: give "
                              f"it as --config FILE or PERFKIT_CONFIG")
        commands = [c for c in CONFIGURED_BY_FILES if spelled in names.get(c, {})]
        for command in commands:
            _set(sources, command, key, value, origin, names)
        if not commands:
            sources.locustfile_config.append((key, value))


def render_config(items: list[tuple[str, Any]] | tuple[tuple[str, Any], ...]) -> str:
    """Locust config items as the text of one config file, for configargparse (the later of
    two items with one key wins, as between Locust's files)."""
    lines = []
    for key, value in items:
        text = f"[{', '.join(str(v) for v in value)}]" if isinstance(value, list | tuple) \
            else str(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
