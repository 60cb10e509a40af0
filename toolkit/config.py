"""Run settings and KPI targets: TOML and options in, typed objects out. No import-time state."""

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'90' and '90s' are seconds; '5m', '2h', '500ms' as written."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"bad duration {text!r}: use e.g. 30s, 5m, 1h")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class LoadSettings:
    """One run of load, stress, endurance or regression, as the user asked for it."""

    command: str = "load"
    target: str | None = None
    scenario: str = "research"
    users: int = 10
    spawn_rate: float = 10.0
    duration_s: float = 60.0
    rate: float | None = None
    kpi_file: Path | None = None
    out: Path | None = None
    workers: int = 0
    target_pid: int | None = None
    variants: tuple[str, ...] = ()
    latency_profile: str = "guide"
    warmup_s: float | None = None
    profile: bool = False
    alert_webhook: str | None = None
    abort_on_fail: bool = False
    reports_dir: Path = Path("reports")
    argv: tuple[str, ...] = field(default_factory=tuple)

    @property
    def effective_warmup_s(self) -> float:
        """Default warm-up: a tenth of the run, at most 30 s; shown in the report, not judged."""
        if self.warmup_s is not None:
            return self.warmup_s
        return min(30.0, self.duration_s / 10.0)
