"""The live view of a run: a block redrawn in place on a terminal, plain lines otherwise."""

from collections.abc import Callable
from typing import Any

from ..analysis import stats
from ..config import LoadSettings

PLAIN_EVERY_S = 10  # CI logs: one line every 10 s is plenty


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_progress(elapsed_s: float, duration_s: float, users: int, state: Any) -> list[str]:
    """Lines for the view: totals, then p50/p95/p99 per request name from the run's histograms."""
    recorder = state.recorder
    requests = sum(entry[1] for name, entry in recorder.totals.items() if " " in name)
    failures = sum(entry[2] for name, entry in recorder.totals.items() if " " in name)
    sample = state.system.latest() or {}
    cpu, rss = sample.get("cpu_percent"), sample.get("rss_mb")
    lines = [
        f"{elapsed_s:5.0f}s / {duration_s:.0f}s  (remaining {max(duration_s - elapsed_s, 0):.0f}s)"
        f"  users {users}  rps {recorder.rps():.1f}  requests {requests}  failures {failures}"
        f"  target cpu {'-' if cpu is None or cpu != cpu else f'{cpu:.0f}%'}"
        f"  rss {'-' if rss is None or rss != rss else f'{rss:.0f}MB'}"
        + (f"  scenario errors {state.errors.count}" if state.errors.count else "")
    ]
    for name in sorted(recorder.totals):
        hist, count, failed = recorder.totals[name]
        lines.append(f"  {name:<48} n={count:<7} fail={failed:<5} "
                     f"p50 {_ms(stats.percentile_ms(hist, 50))}  "
                     f"p95 {_ms(stats.percentile_ms(hist, 95))}  "
                     f"p99 {_ms(stats.percentile_ms(hist, 99))} ms")
    return lines


class LiveView:
    def __init__(self, say: Callable[[str], None], settings: LoadSettings, tty: bool) -> None:
        self.say = say
        self.duration_s = settings.duration_s
        self.tty = tty
        self.drawn = 0
        self.last_plain = -float(PLAIN_EVERY_S)

    def show(self, elapsed_s: float, users: int, state: Any) -> None:
        if not self.tty:
            if elapsed_s - self.last_plain >= PLAIN_EVERY_S:
                self.last_plain = elapsed_s
                self.say(format_progress(elapsed_s, self.duration_s, users, state)[0])
            return
        lines = format_progress(elapsed_s, self.duration_s, users, state)
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.say(up + "\n".join(line + "\x1b[K" for line in lines))
        self.drawn = len(lines)

    def close(self) -> None:
        self.drawn = 0
