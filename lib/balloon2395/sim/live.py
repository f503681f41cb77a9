"""`balloon-2395 --simulate`: the real daemon against a simulated host, shown live, with a summary at the end.

Virtual time runs at `speed` simulated seconds per real second until the
duration is over or SIGINT/SIGTERM (Ctrl-C) comes. On a terminal the view is a table redrawn in
place (log lines scroll above it); otherwise a line per guest is printed every so often. Log lines
carry virtual time.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, TextIO

from .. import PROG
from ..config import Config
from ..logs import lines as logs
from ..quoted import escaped
from ..units import mib, mib_text
from .host import TICKS_PER_S
from .model import usable_kib
from .run import Simulation
from .scenario import DEFAULT_SCENARIO, ScenarioError, load

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
COLUMNS = ("GUEST", "ACTUAL_MiB", "USABLE%", "BAND", "OOM", "NEXT", "LAST ACTION", "WHY")
_REDRAW_S = 0.2  # real seconds between redraws of the live table


class _Row(NamedTuple):
    """A guest as the live view shows it: its figures, what the daemon's last cycle decided for it and why."""

    guest: str
    actual: str
    usable: str
    band: str
    oom: str
    next: str
    last: str
    why: str


def _rows(sim: Simulation) -> Sequence[_Row]:
    cycle = sim.daemon.last if sim.daemon_runs else None
    decided = {d.name: d for d in cycle.decisions} if cycle is not None else {}
    rows = []
    for g in sim.host.guests:
        s, settings = g.state, sim.config.for_domain(g.name)
        last = sim.last_change.get(g.name)
        action = "-" if last is None else f"{last[1].action} {logs.change_sizes(last[1])} at {last[0]:.0f}s"
        if g.lost_at_s is not None:
            action = f"lost to the host's OOM killer at {g.lost_at_s:.0f}s"
        decision = decided.get(g.name)
        following = "-" if decision is None else decision.action + (
            "" if decision.target_kib is None else f" -> {mib_text(decision.target_kib, unit=False)}")
        why = (decision.reason if decision is not None else
               f"no daemon: policy {sim.config.policy}" if not sim.daemon_runs else "no cycle yet")
        rows.append(_Row(g.name, str(mib(s.actual_kib)), f"{usable_kib(g.plan.spec, s) * 100 // s.actual_kib}%",
                         f"{settings.minimal:g}-{settings.maximal:g}%", str(s.oom_kills), following, action, why))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    rows = [[escaped(cell) for cell in row] for row in rows]  # a guest's name is data: one row, whatever it holds
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


class _TableView:
    """A table redrawn in place; erased before a log line so the log scrolls above it."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.drawn, self.last = out, 0, 0.0

    def erase(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.flush()
            self.drawn = 0

    def show(self, sim: Simulation, final: bool = False) -> None:
        if not final and time.monotonic() - self.last < _REDRAW_S:
            return
        self.last = time.monotonic()
        mem = sim.host.memory()
        lines = _table(COLUMNS, _rows(sim)) + [
            f"t={sim.host.elapsed_s:.0f}s  host: guests {mib(mem.guests_kib)} MiB, "
            f"available {mib(mem.available_kib)} of {mib(mem.total_kib)} MiB"
            + (f", swapping {mib(mem.swapped_kib)} MiB" if mem.swapped_kib else "")]
        self.erase()
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)


class _LineView:
    """Without a terminal: a line per guest every `every_s` virtual seconds."""

    def __init__(self, out: TextIO, every_s: float) -> None:
        self.out, self.every_ticks = out, max(1, round(every_s)) * TICKS_PER_S

    def erase(self) -> None:
        pass

    def show(self, sim: Simulation, final: bool = False) -> None:
        if final or sim.host.tick % self.every_ticks:
            return
        for r in _rows(sim):
            self.out.write(escaped(f"[{sim.host.elapsed_s:6.0f}s] {r.guest}  actual {r.actual} MiB  usable {r.usable}  "
                                   f"band {r.band}  oom {r.oom}  next: {r.next} ({r.why})  last: {r.last}") + "\n")
        self.out.flush()


class _VirtualTime(logging.Filter):
    """Stamps log records with virtual time, and clears the live table before they are written."""

    def __init__(self, clock: Callable[[], float], before: Callable[[], None]) -> None:
        super().__init__()
        self.clock, self.before = clock, before

    def filter(self, record: logging.LogRecord) -> bool:
        record.created = self.clock()
        self.before()
        return True


def summary(sim: Simulation, real_s: float) -> str:
    result = sim.result()
    head = (f"simulated {result.duration_s:.0f}s of '{result.scenario}' (policy {result.policy}, "
            f"seed {result.seed}) in {real_s:.1f}s")
    rows = [(g.name, str(g.oom_kills), f"{g.starved_s:.1f}", str(g.setmem_calls), str(mib(g.avg_actual_kib)))
            for g in result.guests]
    return "\n".join([escaped(head)] + _table(("GUEST", "OOM_KILLS", "STARVED_S", "SETMEM", "AVG_MiB"), rows))


def simulate(config: Config, scenario: str, duration_s: Optional[float], speed: float, seed: int,
             out: TextIO = sys.stdout) -> int:
    """Run for `duration_s` virtual seconds (None: until SIGINT or SIGTERM); the CLI's exit status."""
    if duration_s is not None and duration_s <= 0:
        return _usage("--duration must be more than 0")
    if speed <= 0:
        return _usage("--speed must be more than 0")
    try:
        loaded = load(scenario or DEFAULT_SCENARIO)
    except ScenarioError as exc:
        return _usage(str(exc))
    try:
        logs.setup(config.log.logdir, config.log.debug)
    except OSError as exc:
        print(f"{PROG}: cannot open log in {config.log.logdir}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    sim = Simulation(loaded, config, seed, epoch=float(int(time.time())))
    view = _TableView(out) if out.isatty() else _LineView(out, max(5.0, speed / 2))
    erase = view.erase if sys.stderr.isatty() and not config.log.logdir else (lambda: None)
    for handler in logs.log.handlers:
        handler.addFilter(_VirtualTime(lambda: sim.host.now, erase))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # as the daemon: stop, then still say how it went
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    while not stop.is_set() and (duration_s is None or sim.host.elapsed_s < duration_s):
        sim.step()
        if sim.host.tick % TICKS_PER_S == 0:
            view.show(sim)
            stop.wait(sim.host.elapsed_s / speed - (time.monotonic() - started))
    view.show(sim, final=True)
    out.write(summary(sim, time.monotonic() - started) + "\n")
    return EXIT_OK


def _usage(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_USAGE
