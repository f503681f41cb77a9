#!/usr/bin/env python3
"""Cost benchmark: what the daemon itself costs per cycle, with N simulated domains.

    .venv/bin/python bench/cost.py [--json] [--sizes 1,10,100,500] [--cycles 10] [--secs 0.5]

The real daemon (Daemon.cycle, under Daemon.run at `secs`) runs in a process of
its own against the fake virsh run as an executable (the same output as real
virsh 9.0), once with one virsh process per call (`session: false`) and once with
one virsh session (`session: true`). The domains are Linux guests inside the band,
so a steady cycle changes nothing. Next to it, in the same run, the original
script's call pattern per cycle (bench/original-pattern.sh: list, then per domain
dommemstat --period, dommemstat twice, dumpxml, and its grep/awk/sed/bc/cut).

Per N and mode, over the steady cycles after a warm-up:
  virsh_per_cycle   virsh processes started per cycle
  procs_per_cycle   all processes started per cycle (the original's helpers and subshells too)
  cmds_per_cycle    virsh commands per cycle (in a session they cost no process)
  cpu_ms            the daemon's own CPU per cycle (user + system, its threads included, the
                    fake virsh's excluded), idle time between cycles included
  core_pct          that CPU over wall time, at `secs` between cycles
  wall_ms           one cycle's duration, waiting for virsh included
  rss_mib           the daemon process's peak RSS (the original: its bash)
  setmem_per_cycle  setmem calls per steady cycle (0 expected: guests in band)
The original's figures are also given as ratios to each mode (orig/x). It runs
cycle by cycle until 10 s are spent (at least one), as its cycle at N=500 takes
a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

MIB = 1024
MODES = ("process", "session")
ORIGINAL_BUDGET_S = 10.0
COLUMNS = ("n", "mode", "virsh_per_cycle", "procs_per_cycle", "cmds_per_cycle", "cpu_ms", "core_pct", "wall_ms",
           "rss_mib", "setmem_per_cycle", "cycles")


class FakeHost:
    """A temp dir with N running in-band domains, a `virsh` that is the fake, its call and CPU logs."""

    def __init__(self, n: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="b2395-cost-"))
        (self.dir / "bin").mkdir()
        self.virsh = self.dir / "bin" / "virsh"
        self.virsh.write_text(f"#!/bin/sh\nexec {sys.executable} -m balloon2395.sim.fake_virsh \"$@\"\n")
        self.virsh.chmod(0o755)
        self.state, self.calls, self.cpu = self.dir / "state.json", self.dir / "calls.log", self.dir / "cpu.log"
        stats = {"swap_in": 0, "swap_out": 0, "major_fault": 12, "minor_fault": 345678, "unused": 400 * MIB,
                 "available": 1990 * MIB, "usable": 614 * MIB, "disk_caches": 300 * MIB}  # 30 %: in the band
        self.state.write_text(json.dumps({"domains": [
            {"name": f"guest-{i:03d}", "uuid": f"00000000-0000-4000-8000-{i:012d}", "id": i + 1,
             "actual_kib": 2048 * MIB, "maximum_kib": 4096 * MIB, "period": 1, "age": 0, "stats": stats}
            for i in range(n)]}))

    def __enter__(self) -> "FakeHost":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def env(self) -> Dict[str, str]:
        return dict(os.environ, PATH=f"{self.dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                    PYTHONPATH=str(ROOT / "lib"), FAKE_VIRSH_STATE=str(self.state), FAKE_VIRSH_LOG=str(self.calls),
                    FAKE_VIRSH_CPU_LOG=str(self.cpu), LC_ALL="C")

    def marks(self) -> Dict[str, float]:
        return marks(self.calls, self.cpu)


def marks(calls: Path, cpu: Path) -> Dict[str, float]:
    """So far: virsh processes started, commands run (not a session's sentinel echoes), setmem
    commands, and the fake virsh's CPU seconds."""
    entries = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    commands = []
    for entry in entries:  # a process's argv or a line in a session, maybe one 'a ; b' argument
        args = entry["in_session"] if isinstance(entry, dict) else entry[2:] if entry[:1] == ["-c"] else entry
        commands += [c.split() for c in args[0].split(";")] if len(args) == 1 else [args] if args else []
    return {"procs": sum(isinstance(e, list) for e in entries),
            "cmds": sum(c[0] != "echo" for c in commands), "setmem": sum(c[0] == "setmem" for c in commands),
            "fake_cpu": sum(map(float, cpu.read_text().split())) if cpu.exists() else 0.0}


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(mode: str, cycles: int, secs: float) -> Dict[str, object]:
    """In its own process: the real daemon, warmed up, then `cycles` steady cycles under Daemon.run."""
    import logging

    from balloon2395 import config as cfg
    from balloon2395.daemon import Daemon
    from balloon2395.virsh.session import open_virsh

    logging.getLogger("balloon-2395").setLevel(logging.WARNING)
    config = cfg.build({"secs": secs, "session": mode == "session", "connect": "qemu:///system"})
    virsh = open_virsh(config)
    daemon = Daemon(config, virsh)
    for _ in range(2):  # first cycle: a dumpxml per domain; the second checks nothing is left
        daemon.cycle()
    walls: List[float] = []
    stop = threading.Event()
    cycle = daemon.cycle

    def timed():
        started = time.perf_counter()
        decisions = cycle()
        walls.append(time.perf_counter() - started)
        if len(walls) == cycles:
            stop.set()
        return decisions

    daemon.cycle = timed
    logs = Path(os.environ["FAKE_VIRSH_LOG"]), Path(os.environ["FAKE_VIRSH_CPU_LOG"])
    before, cpu0, t0 = marks(*logs), _cpu_s(resource.RUSAGE_SELF), time.monotonic()
    daemon.run(stop)
    cpu, elapsed, after = _cpu_s(resource.RUSAGE_SELF) - cpu0, time.monotonic() - t0, marks(*logs)
    virsh.close()
    return {"virsh_per_cycle": (after["procs"] - before["procs"]) / cycles,
            "cmds_per_cycle": (after["cmds"] - before["cmds"]) / cycles,
            "setmem_per_cycle": (after["setmem"] - before["setmem"]) / cycles,
            "cpu_ms": 1000 * cpu / cycles, "core_pct": 100 * cpu / elapsed,
            "wall_ms": 1000 * sum(walls) / cycles, "rss_mib": _vm("VmHWM"), "cycles": cycles}


def measure(n: int, mode: str, cycles: int, secs: float) -> Dict[str, object]:
    with FakeHost(n) as host:
        result = subprocess.run([sys.executable, __file__, "--worker", mode, "--cycles", str(cycles),
                                 "--secs", str(secs)], env=host.env, capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise RuntimeError(f"worker {mode} n={n} failed: {result.stderr[-2000:]}")
    row = json.loads(result.stdout)
    row["procs_per_cycle"] = row["virsh_per_cycle"]  # the daemon starts nothing but virsh
    return {"n": n, "mode": mode, **row}


def measure_original(n: int) -> Dict[str, object]:
    """bench/original-pattern.sh one cycle at a time, each in a PID namespace of its own so that the
    last PID there counts every process it started."""
    script = str(ROOT / "bench" / "original-pattern.sh")
    count = ['set -- 1; . "$0"; cat /proc/sys/kernel/ns_last_pid; grep ^VmHWM: /proc/$$/status']
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", *count, script]
    cycles, procs, rss, walls = 0, 0, 0.0, 0.0
    with FakeHost(n) as host:
        before, children0 = host.marks(), _cpu_s(resource.RUSAGE_CHILDREN)
        while cycles == 0 or walls < ORIGINAL_BUDGET_S:
            started = time.perf_counter()
            out = subprocess.run(argv, env=host.env, capture_output=True, text=True, timeout=3600, check=True).stdout
            walls += time.perf_counter() - started
            last_pid, hwm = out.split("\n")[-3:-1]
            procs += int(last_pid) - 2  # not its bash (pid 1), not the cat that read the number
            rss = max(rss, int(hwm.split()[1]) / 1024)
            cycles += 1
        after = host.marks()
    cpu = _cpu_s(resource.RUSAGE_CHILDREN) - children0 - (after["fake_cpu"] - before["fake_cpu"])
    return {"n": n, "mode": "original", "virsh_per_cycle": (after["procs"] - before["procs"]) / cycles,
            "procs_per_cycle": procs / cycles, "cmds_per_cycle": (after["cmds"] - before["cmds"]) / cycles,
            "cpu_ms": 1000 * cpu / cycles, "core_pct": None, "wall_ms": 1000 * walls / cycles, "rss_mib": rss,
            "setmem_per_cycle": (after["setmem"] - before["setmem"]) / cycles, "cycles": cycles}


def ratios(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """The original's figure over each mode's, per N: how many times cheaper the port is."""
    out = []
    for row in rows:
        if row["mode"] == "original":
            continue
        orig = next(r for r in rows if r["n"] == row["n"] and r["mode"] == "original")
        out.append({"n": row["n"], "mode": row["mode"], **{
            key: None if not row[key] else round(orig[key] / row[key], 1)
            for key in ("virsh_per_cycle", "procs_per_cycle", "cpu_ms", "wall_ms")}})
    return out


def table(rows: List[Dict[str, object]], keys) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)

    lines = [[k.upper() for k in keys]] + [[cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--sizes", default="1,10,100,500", help="numbers of domains (default 1,10,100,500)")
    parser.add_argument("--cycles", type=int, default=10, help="steady cycles measured per N and mode (default 10)")
    parser.add_argument("--secs", type=float, default=0.5, help="seconds between cycles (default 0.5)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.cycles, args.secs)))
        return 0
    rows = []
    for n in (int(size) for size in args.sizes.split(",")):
        rows += [measure(n, mode, args.cycles, args.secs) for mode in MODES] + [measure_original(n)]
        print(f"n={n} done", file=sys.stderr, flush=True)
    versus = ratios(rows)
    if args.json:
        print(json.dumps({"rows": rows, "original_over_port": versus}, indent=2))
    else:
        print(table(rows, COLUMNS))
        print("\nthe original's figure / the port's (times cheaper):")
        print(table(versus, ("n", "mode", "virsh_per_cycle", "procs_per_cycle", "cpu_ms", "wall_ms")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
