"""A fault as the user writes it: `--fault "at=30s,for=10s,do=COMMAND[,undo=COMMAND]"`.

Keys, comma-separated: `at` (when, from the start of the load), `do` (a shell command run
then), `undo` (a shell command run when the fault ends), `for` (how long the fault lasts:
`undo` runs `for` after `do` started; without `undo` the fault is taken to last `for`),
`every` (repeat the fault every so long while the run lasts, as an endurance run's "a fault
every 10 minutes") and `timeout` (the most a command may take, default 60 s). A command may
hold commas: the text after `do=` runs up to the next `,KEY=` of a known key.

What runs the faults during a run is run/faults.py; what they did to the target is
analysis/availability.py. Pure parsing here, no I/O.
"""

import math
import re
from dataclasses import dataclass

from .errors import ConfigError
from .units import parse_duration

DEFAULT_TIMEOUT_S = 60.0
KEYS = ("at", "for", "every", "timeout", "do", "undo")
_SPLIT = re.compile(r",\s*(?=(?:" + "|".join(KEYS) + r")\s*=)")
_COMMAND = re.compile(r"(?:^|,)\s*(?:do|undo)\s*=")


@dataclass(frozen=True)
class Fault:
    """One --fault. `for_s` None: the fault ends when `do` (or `undo`) says so."""

    text: str
    at_s: float
    do: str
    undo: str | None = None
    for_s: float | None = None
    every_s: float | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def what(self) -> str:
        return self.do


def parse_fault(text: str) -> Fault:
    """A Fault from its text; a ConfigError saying what is wrong with it."""
    text = str(text).strip()
    values: dict[str, str] = {}
    # Before the first command every comma separates; from it on, only a comma before a
    # known key does.
    command = _COMMAND.search(text)
    head, tail = (text[:command.start()], text[command.start():].lstrip(",")) if command \
        else (text, "")
    parts = [*(p for p in head.split(",") if p.strip()), *(_SPLIT.split(tail) if tail else [])]
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise ConfigError(f"--fault {text!r}: {part.strip()!r} is not KEY=VALUE with KEY "
                              f"one of {', '.join(KEYS)}")
        if key in values:
            raise ConfigError(f"--fault {text!r}: {key} is given twice")
        values[key] = value.strip()
    if "at" not in values or not values.get("do"):
        raise ConfigError(f"--fault {text!r}: needs at least at=TIME and do=COMMAND, e.g. "
                          f"at=30s,for=10s,do='docker pause db',undo='docker unpause db'")
    durations = {}
    for key in ("at", "for", "every", "timeout"):
        if key in values:
            try:
                durations[key] = parse_duration(values[key])
            except ConfigError as exc:
                raise ConfigError(f"--fault {text!r}: {key}: {exc}") from None
    if durations.get("every") is not None and durations["every"] <= 0:
        raise ConfigError(f"--fault {text!r}: every must be longer than 0 s")
    if durations.get("timeout") is not None and durations["timeout"] <= 0:
        raise ConfigError(f"--fault {text!r}: timeout must be longer than 0 s")
    if "undo" in values and "for" not in values:
        raise ConfigError(f"--fault {text!r}: undo needs for=TIME (when to run it)")
    if "every" in values and durations["every"] <= durations.get("for", 0.0):
        raise ConfigError(f"--fault {text!r}: every must be longer than for (one fault at a "
                          f"time)")
    return Fault(text=text, at_s=durations["at"], do=values["do"], undo=values.get("undo"),
                 for_s=durations.get("for"), every_s=durations.get("every"),
                 timeout_s=durations.get("timeout", DEFAULT_TIMEOUT_S))


def schedule_faults(faults: tuple[Fault, ...] | list[Fault],
                    duration_s: float) -> list[tuple[float, Fault]]:
    """(start offset s, fault) of every occurrence within `duration_s`, in time order: a
    fault with `every` repeats from its `at`. A fault due after the run ended is listed (it is
    reported as not reached) only when it is a first occurrence."""
    occurrences = []
    for fault in faults:
        occurrences.append((fault.at_s, fault))
        if fault.every_s and math.isfinite(duration_s):
            at_s = fault.at_s + fault.every_s
            while at_s < duration_s:
                occurrences.append((at_s, fault))
                at_s += fault.every_s
    return sorted(occurrences, key=lambda item: item[0])
