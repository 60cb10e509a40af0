"""A fault as the user writes it: `--fault "at=30s,for=10s,do=COMMAND[,undo=COMMAND]"`.

Keys, comma-separated: `at` (when, from the start of the load), `do` (a shell command run
then), `undo` (a shell command run when the fault ends), `for` (how long the fault lasts:
`undo` runs `for` after `do` started; without `undo` the fault is taken to last `for`),
`every` (repeat the fault every so long while the run lasts, as an endurance run's "a fault
every 10 minutes") and `timeout` (the most a command may take, default 60 s). A command may
hold commas: the text after `do=` runs up to the next `,KEY=` of a known key. Instead of
`do`, `net` is a network fault between the load and the target, through perfkit's proxy
(run/proxy.py), for `for`: `latency:300ms`, `bandwidth:100KB/s`, `reset` or `blackhole`.

What runs the faults during a run is run/faults.py; what they did to the target is
analysis/availability.py. Pure parsing here, no I/O.
"""

import math
import re
from dataclasses import dataclass

from .errors import ConfigError
from .units import parse_duration

DEFAULT_TIMEOUT_S = 60.0
KEYS = ("at", "for", "every", "timeout", "do", "undo", "net")
_SPLIT = re.compile(r",\s*(?=(?:" + "|".join(KEYS) + r")\s*=)")
_COMMAND = re.compile(r"(?:^|,)\s*(?:do|undo)\s*=")


@dataclass(frozen=True)
class NetFault:
    kind: str            # latency | bandwidth | reset | blackhole
    amount: float = 0.0  # latency: seconds; bandwidth: bytes per second


def parse_net_fault(text: str) -> NetFault:
    """`latency:300ms`, `bandwidth:100KB/s` (B, KB, MB per second), `reset`, `blackhole`;
    ValueError with the reason otherwise."""
    kind, _, amount = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind in ("reset", "blackhole") and not amount:
        return NetFault(kind)
    if kind == "latency" and amount:
        return NetFault(kind, parse_duration(amount))
    if kind == "bandwidth" and amount:
        number = amount.strip().removesuffix("/s")
        for suffix, scale in (("KB", 1024.0), ("MB", 1024.0**2), ("B", 1.0)):
            if number.endswith(suffix):
                try:
                    rate = float(number.removesuffix(suffix)) * scale
                except ValueError:
                    break
                if rate > 0:
                    return NetFault(kind, rate)
                break
    raise ValueError("write net=latency:300ms, bandwidth:100KB/s, reset or blackhole")


@dataclass(frozen=True)
class Fault:
    """One --fault. `for_s` None: the fault ends when `do` (or `undo`) says so."""

    text: str
    at_s: float
    do: str | None = None
    undo: str | None = None
    for_s: float | None = None
    every_s: float | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    net: NetFault | None = None  # a network fault through perfkit's proxy (run/proxy.py)
    net_text: str = ""

    @property
    def what(self) -> str:
        return f"net={self.net_text}" if self.net is not None else str(self.do)

    def __str__(self) -> str:  # as written (perfkit config shows it so)
        return self.text


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
    if "at" not in values or not (values.get("do") or values.get("net")):
        raise ConfigError(f"--fault {text!r}: needs at least at=TIME and do=COMMAND (or "
                          f"net=...), e.g. at=30s,for=10s,do='docker pause db',"
                          f"undo='docker unpause db', or at=20s,for=15s,net=latency:300ms")
    net = None
    if "net" in values:
        if "do" in values or "undo" in values:
            raise ConfigError(f"--fault {text!r}: one fault is a command (do=) or a network "
                              f"fault (net=), not both")
        if "for" not in values:
            raise ConfigError(f"--fault {text!r}: net= needs for=TIME (how long it lasts)")
        try:
            net = parse_net_fault(values["net"])
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"--fault {text!r}: net={values['net']}: {exc}") from None
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
    return Fault(text=text, at_s=durations["at"], do=values.get("do"),
                 undo=values.get("undo"), for_s=durations.get("for"),
                 every_s=durations.get("every"),
                 timeout_s=durations.get("timeout", DEFAULT_TIMEOUT_S), net=net,
                 net_text=values.get("net", ""))


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
