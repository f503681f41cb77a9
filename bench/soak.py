#!/usr/bin/env python3
"""Soak: the real daemon against a simulated host of many guests for a simulated day, with faults.

    .venv/bin/python bench/soak.py [--json] [--hours 24] [--guests 50] [--seed N] [--rate 0.005]

Every virsh call fails at `--rate` in one of FaultyVirsh's ways (hangs, libvirt
errors, garbage, cut output, doctored figures, domains vanishing before setmem,
setmem without effect), and libvirtd goes away for a while every few simulated
hours. CheckedVirsh checks every setmem against what the daemon read; after
every cycle each guest's balloon target is checked against its floor and
maximum. It prints: simulated time, cycles, faults tried (by kind), setmem
calls, unsafe actions (must be 0), tracebacks (must be 0) and the process RSS at
the start, every simulated hour and at the end (flat: nothing grows with time).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from balloon2395 import PROG  # noqa: E402
from balloon2395.config import Config  # noqa: E402
from balloon2395.daemon import Daemon  # noqa: E402
from balloon2395.settings import DomainSettings  # noqa: E402
from balloon2395.sim.host import TICKS_PER_S  # noqa: E402
from balloon2395.sim.run import Simulation  # noqa: E402
from balloon2395.sim.scenario import load  # noqa: E402
from balloon2395_testkit.faults import CheckedVirsh, FaultyVirsh  # noqa: E402

OUTAGE_EVERY_S = 3 * 3600  # libvirtd restarts this often...
OUTAGE_CALLS = 40  # ...and this many calls fail meanwhile (with the backoff, a few minutes)
HOUR_TICKS, MINUTE_TICKS = 3600 * TICKS_PER_S, 60 * TICKS_PER_S
# Guest kinds, cycled through: (current, maximum, swap, repeat, workload steps).
_KINDS = [
    ("1GiB", "2GiB", "0", None, []),
    ("2GiB", "4GiB", "1GiB", "20m", ["{at: 2m, anon: +1GiB, over: 5s}", "{at: 8m, anon: 0, over: 30s}"]),
    ("1GiB", "3GiB", "512MiB", "1h", ["{at: 0, anon: +1200MiB, over: 40m}", "{at: 50m, anon: 0, over: 5m}"]),
    ("1GiB", "2GiB", "512MiB", "15m", ["{at: 3m, cache: +1GiB, rate: 100MiB/s}", "{at: 10m, cache: 0}"]),
    ("512MiB", "1GiB", "0", "7m", ["{at: 1m, anon: +200MiB}", "{at: 2m, anon: 0}"]),
]


def scenario_yaml(guests: int, hours: float) -> str:
    lines = [f"duration: {hours}h", f"host: {{total: {guests * 3}GiB, own: 2GiB, cache: 1GiB}}", "guests:"]
    for i in range(guests):
        current, maximum, swap, repeat, steps = _KINDS[i % len(_KINDS)]
        lines.append(f"  - name: soak-{i:02d}")
        lines += [f"    current: {current}", f"    maximum: {maximum}", f"    swap: {swap}", "    noise: 20MiB"]
        if i % 7 == 3:
            lines.append("    stats_period: 0")  # the daemon switches it on
        if i % 2 == 0:  # shrunk from the start; the others only once they went burst_wait without a burst
            lines.append("    deflate_on_oom: true")
        if repeat:
            lines += [f"    repeat: {repeat}", "    workload:"] + [f"      - {s}" for s in steps]
    return "\n".join(lines) + "\n"


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Counter(logging.Handler):
    """Counts the daemon's log lines by level, and those that carry a traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: Dict[str, int] = {}
        self.tracebacks: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] = self.levels.get(record.levelname, 0) + 1
        if record.exc_info:
            self.tracebacks.append(self.format(record))


def soak(hours: float = 24, guests: int = 50, seed: int = 0, rate: float = 0.005,
         outage_every_s: float = OUTAGE_EVERY_S) -> Dict[str, object]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soak.yaml"
        path.write_text(scenario_yaml(guests, hours))
        # idle_shrink always: idle guests shrink on a roomy host too, the most changes to break with faults
        sim = Simulation(load(str(path)), replace(Config(), policy="target",
                                                  defaults=DomainSettings(idle_shrink="always")), seed)
    config, clock = sim.daemon.config, sim.daemon.clock
    simulated = sim.daemon.virsh
    faulty = FaultyVirsh(simulated, random.Random(seed), rate)
    checked = CheckedVirsh(faulty, config, clock)
    sim.daemon = Daemon(config, checked, clock)  # the same daemon, its virsh now faulty and watched
    log = logging.getLogger(PROG)
    counter = _Counter()
    log.handlers, log.propagate = [counter], False
    log.setLevel(logging.INFO)
    floors = {g.name: min(config.for_domain(g.name).floor_kib, g.state.actual_kib) for g in sim.host.guests}
    ticks, cycle_ticks = round(hours * 3600 * TICKS_PER_S), sim.cycle_ticks
    outage_ticks = round(outage_every_s * TICKS_PER_S)
    cycles = bounds = 0
    escaped: List[str] = []
    hourly = [rss_kib()]  # at the start, then every simulated hour
    while sim.host.tick < ticks:
        if sim.host.tick % outage_ticks == outage_ticks // 2:
            faulty.outage(OUTAGE_CALLS)
        if sim.host.tick % MINUTE_TICKS == 0:
            # What the harness keeps (the benchmark's per-second samples, the in-process virsh's argv
            # log) is the simulator's memory, not the daemon's: dropped, so RSS shows the daemon's.
            for tracker in sim.trackers:
                tracker.series.clear()
            simulated.argv_log.clear()
        if sim.host.tick % HOUR_TICKS == 0:
            hourly.append(rss_kib())
        try:
            sim.step()
        except Exception as exc:  # a cycle that raised: the real loop would log a traceback
            escaped.append(repr(exc))
        if sim.host.tick % cycle_ticks == 0:
            cycles += 1
            for g in sim.host.guests:
                if not floors[g.name] <= g.state.target_kib <= g.plan.spec.maximum_kib:
                    bounds += 1
    return {
        "simulated_h": hours, "guests": guests, "seed": seed, "fault_rate": rate, "cycles": cycles,
        "cycles_read": checked.reads, "faults_tried": sum(faulty.tried.values()),
        "faults_by_kind": dict(sorted(faulty.tried.items())), "setmem_calls": checked.setmems,
        "unsafe_actions": len(checked.violations) + bounds, "violations": checked.violations[:20],
        "tracebacks": len(escaped) + len(counter.tracebacks), "log_lines": counter.levels,
        "oom_kills": sum(g.state.oom_kills for g in sim.host.guests),
        "rss_start_kib": hourly[0], "rss_end_kib": rss_kib(), "rss_hourly_kib": hourly,
        "real_s": round(time.monotonic() - started, 1),
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    parser.add_argument("--guests", type=int, default=50, help="guests (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.005, help="share of virsh calls that fail (default 0.005)")
    args = parser.parse_args(argv)
    result = soak(args.hours, args.guests, args.seed, args.rate)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:16} {value}")
    return 0 if result["unsafe_actions"] == 0 and result["tracebacks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
