#!/usr/bin/env python3
"""Scenarios replayed on real Debian guests under the real daemon, beside the simulator's figures for them.

    sudo .venv/bin/python bench/real.py [--quick] [--scenario NAME|PATH ...] [--policy NAME ...]
                                        [--duration S] [--json] [--out DIR]
    .venv/bin/python bench/real.py --against FILE [--json]

For each scenario (default: real-idle, real-burst, real-cache, real-redis, about 29 minutes; --quick:
real-quick under `target` only, about 3 minutes) and each policy (default: step and target; the
whole-host peers proxmox and mom run at their own 10 s cadence), in wall time: a Debian guest per
scenario guest (bench/calibration/real_replay.py; sizes capped at 1 GiB and at the host's free
memory, with a warning when a guest is scaled down, its workload alike), the real `balloon-2395
--policy P` on them, a thread per guest turning its trace into agent calls (anonymous MiB held in hogs,
the page cache read from the image's files, Redis data for a guest named redis*), dommemstat sampled
every second (actual, usable, page cache, swap-in, QEMU's RSS). The same scenario (as scaled) runs in
the simulator for the same duration. Printed per scenario and policy: bench/control.py's columns for the
simulator (`P sim`), the real guests (`P real`) and their difference (`P diff`, real - sim). The real
side has no host swap and no lost guests (0), oom_beyond_max is not known (0), setmem calls are the
daemon log's change lines. PNGs: bench/out/SCENARIO.real.png (each guest's actual, used, page cache,
QEMU RSS and the band over time, real and simulated, per policy) when matplotlib is installed.

--against FILE boots nothing: it runs the simulator now for each run an earlier `--json` output recorded
and prints it beside that real run (how the simulator's constants are calibrated: docs/simulator.md).
After the table, a line per scenario and policy says whether the simulator is calibrated to the real
run: the same OOM kills, returned and saved memory and starved seconds within 15 %.

Needs root, libvirt running (sudo tests/e2e/prepare.sh starts it) and the Debian image (sudo
.ci/debian-image); exits 2 with the reason otherwise. Only domains it creates (b2395e2e-deb*) are
touched, and removed after, also when it ends on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from balloon2395.config import Config  # noqa: E402
from balloon2395.decide.cycle import POLICIES  # noqa: E402
from balloon2395.decide.peers import CYCLE_S, PEERS  # noqa: E402
from balloon2395.settings import DomainSettings  # noqa: E402
from balloon2395.sim.run import RunResult, run_scenario  # noqa: E402
from balloon2395.sim.scenario import Scenario, ScenarioError, load  # noqa: E402
from balloon2395_testkit.daemon_process import DAEMON  # noqa: E402
from balloon2395_testkit.debian_guest import not_ready  # noqa: E402
from balloon2395_testkit.guests import exit_on_sigterm  # noqa: E402
from calibration.real_replay import (  # noqa: E402
    CALIBRATED_WITHIN,
    MIB,
    Sizing,
    calibration_misses,
    differences,
    replay,
    scaled,
    sizing,
)
from control import row, table  # noqa: E402

PROG_NAME = "real.py"
DEFAULT_SET = ("real-idle", "real-burst", "real-cache", "real-redis")
QUICK = "real-quick"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK}, under target unless --policy says")
    parser.add_argument("--scenario", action="append", metavar="NAME|PATH",
                        help=f"this scenario (repeatable; default: {', '.join(DEFAULT_SET)})")
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES), metavar="NAME",
                        help="this policy or peer (repeatable; default: step and target)")
    parser.add_argument("--duration", type=float, metavar="S", help="seconds per run (default: each scenario's)")
    parser.add_argument("--against", metavar="FILE",
                        help="boot nothing: the simulator now beside the real runs an earlier --json output recorded")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), metavar="DIR", help="where the PNGs go")
    args = parser.parse_args(argv)
    if args.against and (args.quick or args.scenario or args.policy or args.duration):
        parser.error("--against runs what the file recorded: no --quick, --scenario, --policy or --duration")
    return args


def config_for(policy: str) -> Tuple[Config, Tuple[str, ...]]:
    """The simulator's config and the real daemon's extra flags for one policy: peers at their cadence;
    target without its burst wait, which outlasts these runs of minutes (what they calibrate is the guest
    model: the recorded runs were made so), and with the band shrinking idle guests on these roomy hosts
    (idle_shrink: always), as when they were recorded."""
    if policy in PEERS:
        return Config(secs=CYCLE_S, policy=policy), ("--secs", f"{CYCLE_S:g}")
    return (Config(policy=policy, defaults=DomainSettings(burst_wait_s=0, idle_shrink="always")),
            ("--burst-wait", "0", "--idle-shrink", "always"))


def host_mib() -> Tuple[int, int]:
    """(MemTotal, MemAvailable) of this host, MiB."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(info["MemTotal"].split()[0]) // MIB, int(info["MemAvailable"].split()[0]) // MIB


def rows_for(sim: Dict[str, Any], real: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The simulator's row, the real one and their difference (control.py's rows), labelled by policy."""
    policy = real["policy"]
    return [dict(sim, policy=f"{policy} sim"), dict(real, policy=f"{policy} real"), differences(real, sim)]


def run_one(scenario: Scenario, policy: str, duration_s: float, log_dir: Path) -> Tuple[RunResult, RunResult, Dict]:
    total_mib, free_mib = host_mib()
    sizes, warnings = sizing(scenario, free_mib)
    for w in warnings:
        print(f"{PROG_NAME}: warning: {w}", file=sys.stderr)
    replayed = scaled(scenario, sizes)
    config, flags = config_for(policy)
    sim = run_scenario(replayed, policy, 0, duration_s, config)
    real, notes = replay(replayed, sizes, policy, duration_s, config.for_domain, flags, total_mib * MIB, log_dir,
                         lambda line: print(f"{PROG_NAME}: {scenario.name}: {line}", file=sys.stderr, flush=True))
    notes.update(warnings=warnings, duration_s=duration_s, sizes=[asdict(s) for s in sizes])
    return sim, real, notes


def series(real: RunResult) -> Dict[str, List[List[int]]]:
    """Each real guest's samples for --json: [t s, actual, usable, page cache, QEMU RSS, swap-in so far] KiB."""
    return {g.name: [[x.t_s, x.actual_kib, x.usable_kib, x.cache_kib, x.rss_kib, x.swapped_kib] for x in g.series]
            for g in real.guests}


def plot(scenario: str, pairs: Sequence[Tuple[RunResult, RunResult]], out_dir: Path) -> Path:
    """A row per guest, a column per policy: real lines solid, the simulator's dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_guests = len(pairs[0][1].guests)
    fig, axes = plt.subplots(n_guests, len(pairs), figsize=(6 * len(pairs), 2.8 * n_guests), squeeze=False)
    lines = (("actual", "tab:blue", lambda s: s.actual_kib), ("used", "tab:red", lambda s: s.used_kib),
             ("cache", "tab:orange", lambda s: s.cache_kib), ("QEMU RSS", "tab:purple", lambda s: s.rss_kib))
    for col, (sim, real) in enumerate(pairs):
        for i, (gs, gr) in enumerate(zip(sim.guests, real.guests)):
            ax = axes[i][col]
            lo, hi = 1 - gr.band[0] / 100, 1 - gr.band[1] / 100
            t = [s.t_s / 60 for s in gr.series]
            used = [s.used_kib / 1024 for s in gr.series]
            ax.fill_between(t, [u / hi for u in used], [u / lo for u in used], color="tab:green", alpha=0.15,
                            linewidth=0, label="band (real)")
            for label, color, value in lines:
                ax.plot(t, [value(s) / 1024 for s in gr.series], color=color, linewidth=1, label=label)
                ax.plot([s.t_s / 60 for s in gs.series], [value(s) / 1024 for s in gs.series], color=color,
                        linewidth=1, linestyle="--")
            ax.set_title(f"{gr.name} ({real.policy}; dashed: simulated)", fontsize=9)
            ax.set_ylabel("MiB")
            ax.set_xlabel("minutes")
            ax.set_ylim(bottom=0)
    axes[0][0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{scenario}.real.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plots(results: List[Tuple[RunResult, RunResult]], out: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{PROG_NAME}: matplotlib is not installed: no plots (./install.sh --bench installs it)",
              file=sys.stderr)
        return
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(real.scenario for _, real in results):
        path = plot(name, [pair for pair in results if pair[1].scenario == name], out_dir)
        print(f"{PROG_NAME}: wrote {path}", file=sys.stderr)


def recorded(path: str) -> List[Tuple[Scenario, str, float, Dict[str, Any]]]:
    """An earlier --json output's runs: (the scenario as it was replayed, policy, duration, the real row)."""
    try:
        doc = json.loads(Path(path).read_text())
        reals = {(r["scenario"], r["policy"]): r for r in doc["rows"]}
        runs = []
        for note in doc["notes"]:
            scenario = scaled(load(note["scenario"]), [Sizing(**s) for s in note["sizes"]])
            real = dict(reals[(note["scenario"], f"{note['policy']} real")], policy=note["policy"])
            runs.append((scenario, note["policy"], note["duration_s"], real))
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not what bench/real.py --json writes ({type(exc).__name__}: {exc})") from None
    return runs


def against(path: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The simulator run now beside the real runs recorded in `path`: no guest is booted."""
    rows, notes = [], []
    for scenario, policy, duration_s, real in recorded(path):
        config, _ = config_for(policy)
        rows += rows_for(row(run_scenario(scenario, policy, 0, duration_s, config)), real)
        notes.append({"scenario": scenario.name, "policy": policy})
    return rows, notes


def calibration(rows: List[Dict[str, Any]]) -> List[str]:
    """A line per (scenario, policy): whether the simulator is calibrated to the real run."""
    out = []
    for sim, real in zip(rows[0::3], rows[1::3]):
        policy = real["policy"].rsplit(" ", 1)[0]
        misses = calibration_misses(real, sim)
        out.append(f"calibration {real['scenario']}/{policy}: " + ("; ".join(misses) if misses else
                   f"kills equal; returned, saved and starved within {CALIBRATED_WITHIN * 100:g} %"))
    return out


class NotReady(Exception):
    """This machine cannot boot the real guests."""


def replay_all(args: argparse.Namespace) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]],
                                                   List[Tuple[RunResult, RunResult]]]:
    scenarios = [load(n) for n in args.scenario or ([QUICK] if args.quick else DEFAULT_SET)]
    reason = not_ready() or (None if os.access(DAEMON, os.X_OK) else f"{DAEMON} is not executable")
    if reason:
        raise NotReady(reason)
    exit_on_sigterm()
    policies = args.policy or (["target"] if args.quick else ["step", "target"])
    log_dir = Path(tempfile.mkdtemp(prefix="balloon-2395-real-"))
    started = time.monotonic()
    results, rows, notes = [], [], []
    for scenario in scenarios:
        for policy in policies:
            sim, real, note = run_one(scenario, policy, args.duration or scenario.duration_s, log_dir)
            results.append((sim, real))
            rows += rows_for(row(sim), dict(row(real), policy=policy))
            notes.append(dict(note, scenario=scenario.name, policy=policy))
            if args.json:
                notes[-1]["series"] = series(real)
    print(f"{PROG_NAME}: {len(results)} runs in {time.monotonic() - started:.0f} s; daemon logs in {log_dir}",
          file=sys.stderr)
    return rows, notes, results


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results: List[Tuple[RunResult, RunResult]] = []
    try:
        if args.against:
            rows, notes = against(args.against)
        else:
            rows, notes, results = replay_all(args)
    except (ScenarioError, OSError, ValueError) as exc:
        print(f"{PROG_NAME}: {exc}", file=sys.stderr)
        return 2
    except NotReady as exc:
        print(f"{PROG_NAME}: cannot replay on real guests: {exc}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"elapsed_s": round(elapsed, 1), "rows": rows, "notes": notes,
                          "calibration": calibration(rows)}, indent=2))
    else:
        print(table(rows))
        for line in calibration(rows):
            print(line)
        for note in notes:
            print(json.dumps(note))
    if results:
        plots(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
