"""Durations, quantities and the way numbers are written: text in, floats out, and back."""

import math
import re

from .errors import ConfigError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?\s*")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float) -> float:
    """Locust's time spans and a little more: '90' and '90s' are seconds; '5m', '2h',
    '1h30m', '3h30m10s' and '500ms' as written (parts in any order, decimals allowed)."""
    spelled = str(text).strip()
    position, total, units = 0, 0.0, []
    while position < len(spelled):
        match = _DURATION_PART.match(spelled, position)
        if not match or (match.group(2) is None and match.end() < len(spelled)):
            raise ConfigError(f"bad duration {text!r}: use e.g. 30s, 5m, 1h30m, 500ms")
        units.append(match.group(2))
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if not units or len(set(units)) != len(units):
        raise ConfigError(f"bad duration {text!r}: use e.g. 30s, 5m, 1h30m, 500ms")
    return total


# KPI values are written with their unit ("500ms", "50rps", "512MB") so a bare number can
# never be read in the wrong unit; each metric unit accepts the spellings below.
_QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([A-Za-z%/]+)\s*$")
QUANTITY_UNITS: dict[str, dict[str, float]] = {
    "ms": {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0},
    "s": {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0},
    "rps": {"rps": 1.0, "req/s": 1.0},
    "%": {"%": 1.0},
    "MB": {"KB": 1 / 1024, "MB": 1.0, "GB": 1024.0},
    "MB/s": {"KB/s": 1 / 1024, "MB/s": 1.0, "GB/s": 1024.0},
    "queries/s": {"queries/s": 1.0, "qps": 1.0},
    "jobs": {"jobs": 1.0, "job": 1.0},
}


def parse_quantity(text: object, unit: str) -> float:
    """'500ms' or '1s' -> 500.0 for unit "ms"; the value is returned in `unit`."""
    spellings = QUANTITY_UNITS[unit]
    accepted = ", ".join(f'"1{s}"' if s != "%" else '"0.1%"' for s in spellings)
    if isinstance(text, bool) or not isinstance(text, str):
        raise ConfigError(f"write the value with its unit as a string, e.g. {accepted} "
                          f"(got {text!r})")
    match = _QUANTITY.match(text)
    if not match:
        raise ConfigError(f"bad value {text!r}: write a number and a unit, e.g. {accepted}")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix not in spellings:
        raise ConfigError(f"unknown unit {suffix!r} in {text!r}: this metric takes {accepted}")
    if number < 0:
        raise ConfigError(f"negative value {text!r}")
    return number * spellings[suffix]


def format_value(value: float | None, unit: str) -> str:
    """'812 ms', '42.1 ms', '0.05 %', '—' for missing: three significant digits at most."""
    if value is None or math.isnan(value):
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def format_percent(value: float) -> str:
    return f"{abs(value):.1f} %" if abs(value) < 1 else f"{abs(value):.0f} %"
