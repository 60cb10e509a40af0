"""The live view of a run: a block redrawn in place on a terminal, plain lines otherwise."""

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..analysis import stats
from ..settings import LoadSettings

if TYPE_CHECKING:  # the runner imports this module
    from .recorder import Recorder
    from .runner import RunState

PLAIN_EVERY_S = 10  # CI logs: one line every 10 s is plenty
STALL_S = 10


def stalled(elapsed_s: float, users: int, recorder: "Recorder") -> bool:
    """Users are running, yet nothing completed (or failed) for STALL_S seconds."""
    return users > 0 and elapsed_s >= STALL_S and recorder.rps(STALL_S) == 0


def stall_warning(users: int) -> str:
    return (f"WARNING: {users} users running and no request completed in the last {STALL_S} s: "
            f"the target may hang (each request gives up after --request-timeout)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_progress(elapsed_s: float, duration_s: float, users: int,
                    state: "RunState") -> list[str]:
    """Lines for the view: totals, then p50/p95/p99 per request name from the run's histograms."""
    recorder = state.recorder
    requests = sum(tally.count for name, tally in recorder.totals.items() if " " in name)
    failures = sum(tally.failures for name, tally in recorder.totals.items() if " " in name)
    sample = state.system.latest() or {}
    cpu, rss = sample.get("cpu_busiest_percent"), sample.get("rss_mb")
    until = "Stop on the live page" if state.web is not None else "the LoadTestShape ends"
    clock = (f"{elapsed_s:5.0f}s  (until {until})" if math.isinf(duration_s) else
             f"{elapsed_s:5.0f}s / {duration_s:.0f}s  (remaining "
             f"{max(duration_s - elapsed_s, 0):.0f}s)")
    lines = [
        f"{clock}  users {users}  rps {recorder.rps():.1f}  requests {requests}"
        f"  failures {failures}"
        f"  target cpu {'-' if cpu is None or cpu != cpu else f'{cpu:.0f}% of a core'}"
        f"  rss {'-' if rss is None or rss != rss else f'{rss:.0f}MB'}"
        + (f"  scenario errors {state.errors.count}" if state.errors.count else "")
    ]
    if stalled(elapsed_s, users, recorder):
        lines.insert(1, "  " + stall_warning(users))
    for name in sorted(recorder.totals):
        tally = recorder.totals[name]
        hist, count, failed = tally.hist, tally.count, tally.failures
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
        self.warned_stall = False

    def show(self, elapsed_s: float, users: int, state: "RunState") -> None:
        if not self.tty:
            stall = stalled(elapsed_s, users, state.recorder)
            if stall and not self.warned_stall:
                self.say(f"perfkit: {stall_warning(users)}")  # at once, once per stall
            self.warned_stall = stall
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
