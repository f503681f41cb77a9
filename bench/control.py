#!/usr/bin/env python3
"""Control-quality benchmark: every policy, the peers and the baselines over every scenario, in
virtual time, deterministic for a seed.

    .venv/bin/python bench/control.py [--json | --markdown] [--seed N ...] [--scenario NAME|PATH ...] [--duration S]
                                      [--policy NAME ...] [--jobs N] [--out DIR]

Runs: this daemon's policies (step, target), the peers' rules ported from their sources
(proxmox, mom: at their own 10 s cadence) and two baselines without a daemon: none, and fpr (every
guest with free page reporting on). Per (scenario, policy, seed), summed over the scenario's guests:
  guests_lost        guests (whole QEMUs) the host's OOM killer killed: the worst outcome
  oom_kills          OOM kills in the guests
  kills              (JSON only) the two added up, as bench/real.py's recordings have it
  oom_beyond_max     of oom_kills, kills of a workload that wanted more than its domain's maximum memory
                     plus swap: no balloon could have prevented them
  starved_s          guest-seconds with usable under 5% of actual, or swapping in
  swap_in_mib        MiB swapped in inside the guests
  reclaimed_gib_avg  memory the balloons held back (maximum - actual), time average, GiB
  host_saved_gib     host memory the guests left free: maximum - QEMU RSS (what the guest touched, less
                     what the balloon or free page reporting gave back, and QEMU's own memory), time
                     average, GiB; a lost guest counts as its maximum and QEMU's own from then on
  headroom_bound_gib the most a policy could have saved the host while leaving each guest its `headroom`
                     usable (and its floor), given the memory the guest used in this run (maximum - that
                     least size, all touched, - QEMU's own memory)
  host_swap_s        seconds the host was swapping (the guests' RSS beyond its RAM)
  setmem_calls       setmem calls the daemon made
  relief_p50_s/p95_s after the end of each rise in a workload's demand, seconds until the guest's
                     usable is back at the band's minimum (0 when it never fell below)
After the table, a line per scenario says whether `target` is beaten there (see `beaten`: harm is compared
lexicographically, guests lost, then OOM kills, then starved seconds; memory saved only after). It also
draws bench/out/SCENARIO.png: each guest's actual, QEMU RSS, used and the band over time, per policy
(with matplotlib, from ./install.sh --bench).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from balloon2395 import PROG  # noqa: E402
from balloon2395.config import Config  # noqa: E402
from balloon2395.decide.cycle import POLICIES  # noqa: E402
from balloon2395.decide.peers import CYCLE_S, PEERS  # noqa: E402
from balloon2395.sim.run import BASELINES, RunResult, run_scenario  # noqa: E402
from balloon2395.sim.scenario import ScenarioError, load, names  # noqa: E402

KEYS = ("scenario", "policy", "seed", "kills", "oom_kills", "guests_lost", "oom_beyond_max", "starved_s",
        "swap_in_mib", "reclaimed_gib_avg", "host_saved_gib", "headroom_bound_gib", "host_swap_s", "setmem_calls",
        "relief_p50_s", "relief_p95_s")
# The table shows a lost guest and an OOM kill inside one apart, the worst harm first; `kills` (their sum)
# stays in the JSON rows only, for the real runs recorded with it (bench/real.py).
SHOWN = ("scenario", "policy", "seed", "guests_lost", "oom_kills", "oom_beyond_max", "starved_s", "swap_in_mib",
         "reclaimed_gib_avg", "host_saved_gib", "headroom_bound_gib", "host_swap_s", "setmem_calls",
         "relief_p50_s", "relief_p95_s")
HEADINGS = ("SCENARIO", "POLICY", "SEED", "LOST", "OOM_KILLS", "OOM_BEYOND_MAX", "STARVED_S", "SWAP_IN_MiB",
            "RETURNED_GiB", "HOST_SAVED_GiB", "HEADROOM_BOUND_GiB", "HOST_SWAP_S", "SETMEM",
            "RELIEF_P50_S", "RELIEF_P95_S")
# Harm, worst first: a whole guest lost outweighs any number of processes killed inside guests, which
# outweighs any number of starved seconds; memory saved counts only between runs of equal harm.
HARM = (("guests_lost", "guests lost"), ("oom_kills", "OOM kills"), ("starved_s", "starved s"))
KIB_PER_GIB = 1024 ** 2
BOUND_SAVED_SHARE = 0.9  # where no policy kills, target must save this share of the headroom bound


def percentile(values: Sequence[float], pct: float) -> Optional[float]:
    """Nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def row(result: RunResult) -> Dict[str, Any]:
    guests = result.guests
    reliefs = [r for g in guests for r in g.relief_s]
    oom_kills = sum(g.oom_kills for g in guests)
    return {
        "scenario": result.scenario, "policy": result.policy, "seed": result.seed,
        "kills": oom_kills + result.guests_lost, "oom_kills": oom_kills, "guests_lost": result.guests_lost,
        "oom_beyond_max": sum(g.oom_kills_beyond_max for g in guests),
        "starved_s": round(sum(g.starved_s for g in guests), 1),
        "swap_in_mib": sum(g.swap_in_kib for g in guests) // 1024,
        "reclaimed_gib_avg": round(sum(g.maximum_kib - g.avg_actual_kib for g in guests) / KIB_PER_GIB, 2),
        "host_saved_gib": round(sum(g.maximum_kib - g.avg_rss_kib for g in guests) / KIB_PER_GIB, 2),
        "headroom_bound_gib": round(sum(g.maximum_kib - g.avg_least_rss_kib for g in guests) / KIB_PER_GIB, 2),
        "host_swap_s": round(result.host_swap_s, 1),
        "setmem_calls": sum(g.setmem_calls for g in guests),
        "relief_p50_s": percentile(reliefs, 50), "relief_p95_s": percentile(reliefs, 95),
    }


def _run(job: Tuple[str, str, int, Optional[float]]) -> RunResult:
    path, policy, seed, duration_s = job
    logging.getLogger(PROG).setLevel(logging.WARNING)  # a line per setmem would drown the table
    config = Config(secs=CYCLE_S) if policy in PEERS else Config()
    return run_scenario(load(path), policy, seed, duration_s, config)


def beaten(rows: List[Dict[str, Any]]) -> List[str]:
    """How `target` is beaten among the rows of one scenario and seed: a peer or baseline with less harm,
    compared lexicographically (guests lost, then OOM kills, then starved seconds); or with as little harm
    and more host memory saved; or, where no policy kills, less than BOUND_SAVED_SHARE of the headroom
    bound saved."""
    mine = next(r for r in rows if r["policy"] == "target")
    out = []
    for r in (r for r in rows if r["policy"] in PEERS or r["policy"] in BASELINES):
        worse = next(((key, what) for key, what in HARM if r[key] != mine[key]), None)
        if worse is not None and r[worse[0]] < mine[worse[0]]:
            out.append(f"{r['policy']} has fewer {worse[1]} ({r[worse[0]]} < {mine[worse[0]]})")
        elif worse is None and r["host_saved_gib"] > mine["host_saved_gib"]:
            out.append(f"{r['policy']} does as little harm and saves more "
                       f"({r['host_saved_gib']} > {mine['host_saved_gib']} GiB)")
    nobody_kills = all(r["guests_lost"] == 0 and r["oom_kills"] == 0 for r in rows)
    if nobody_kills and mine["host_saved_gib"] < BOUND_SAVED_SHARE * mine["headroom_bound_gib"]:
        out.append(f"saves {mine['host_saved_gib']} GiB < {BOUND_SAVED_SHARE:.0%} of the bound "
                   f"{mine['headroom_bound_gib']} GiB where no policy kills")
    return out


def table(rows: List[Dict[str, Any]]) -> str:
    cells = [HEADINGS] + [tuple("-" if r[k] is None else str(r[k]) for k in SHOWN) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(SHOWN))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


MARKDOWN = (("scenario", "scenario"), ("seed", "seed"), ("policy", "policy"), ("guests_lost", "lost"),
            ("oom_kills", "OOM kills"), ("starved_s", "starved s"), ("swap_in_mib", "swap-in MiB"),
            ("reclaimed_gib_avg", "returned GiB"), ("host_saved_gib", "host saved GiB"),
            ("headroom_bound_gib", "headroom bound GiB"), ("host_swap_s", "host swap s"), ("setmem_calls", "setmem"))


def markdown(rows: List[Dict[str, Any]]) -> str:
    """The table docs/simulator.md shows: a lost guest and OOM kills apart, the worst harm first."""
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(h for _, h in MARKDOWN) + " | relief p50 / p95 s |",
             "|---|---:|---|" + "---:|" * (len(MARKDOWN) - 2)]
    for r in sorted(rows, key=lambda r: (r["scenario"], r["seed"])):
        cells = [cell(r[k]) for k, _ in MARKDOWN] + [f"{cell(r['relief_p50_s'])} / {cell(r['relief_p95_s'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: List[RunResult], out_dir: Path) -> Path:
    """One PNG for one scenario: a row per guest, a column per policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guests = [g.name for g in results[0].guests]
    fig, axes = plt.subplots(len(guests), len(results), figsize=(6 * len(results), 2.6 * len(guests)),
                             squeeze=False, sharex=True)
    for col, result in enumerate(results):
        for line, g in enumerate(result.guests):
            ax = axes[line][col]
            t = [s.t_s / 60 for s in g.series]
            used = [s.used_kib / 1024 for s in g.series]
            lo, hi = (1 - g.band[0] / 100), (1 - g.band[1] / 100)
            # the sizes at which the guest's usable % would sit inside the band
            ax.fill_between(t, [u / hi for u in used], [u / lo for u in used], color="tab:green", alpha=0.2,
                            linewidth=0, label="band")
            ax.plot(t, [s.actual_kib / 1024 for s in g.series], color="tab:blue", linewidth=1, label="actual")
            ax.plot(t, used, color="tab:red", linewidth=1, label="used")
            ax.plot(t, [s.rss_kib / 1024 for s in g.series], color="tab:purple", linewidth=1, linestyle="--",
                    label="QEMU RSS")
            ax.axhline(g.maximum_kib / 1024, color="grey", linestyle=":", linewidth=1)
            kills = [(s.t_s / 60, s.actual_kib / 1024) for prev, s in zip(g.series, g.series[1:])
                     if s.oom_kills > prev.oom_kills]
            if kills:
                ax.plot(*zip(*kills), "x", color="black", label="OOM kill")
            ax.set_title(f"{g.name} ({result.policy})", fontsize=9)
            ax.set_ylabel("MiB")
            ax.set_ylim(bottom=0)
    axes[0][0].legend(loc="upper right", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    fig.tight_layout()
    path = out_dir / f"{results[0].scenario}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def verdicts(rows: List[Dict[str, Any]]) -> List[str]:
    """A line per scenario and seed where `target` ran beside others: beaten, and how, or not."""
    out = []
    keys = sorted({(r["scenario"], r["seed"]) for r in rows})
    for name, seed in keys:
        group = [r for r in rows if (r["scenario"], r["seed"]) == (name, seed)]
        if len(group) < 2 or not any(r["policy"] == "target" for r in group):
            continue
        how = beaten(group)
        out.append(f"{name} seed {seed}: target " + ("is beaten: " + "; ".join(how) if how else "is not beaten"))
    return out


def _parser() -> argparse.ArgumentParser:
    every = list(POLICIES) + list(BASELINES)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    out.add_argument("--markdown", action="store_true", help="print the table docs/simulator.md shows")
    parser.add_argument("--seed", type=int, action="append", metavar="N",
                        help="seed of the workloads (repeatable; default 0)")
    parser.add_argument("--scenario", action="append", metavar="NAME|PATH",
                        help="only this scenario (repeatable; default: all of examples/scenarios/)")
    parser.add_argument("--policy", action="append", choices=every, metavar="NAME",
                        help=f"only this policy, peer or baseline (repeatable; default all: {', '.join(every)})")
    parser.add_argument("--duration", type=float, metavar="S", help="simulated seconds (default: each scenario's)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (default: CPUs)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), metavar="DIR", help="where the PNGs go")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        scenarios = {s.name: s for s in (load(n) for n in (args.scenario or names()))}
    except ScenarioError as exc:
        print(f"control.py: {exc}", file=sys.stderr)
        return 2
    policies = args.policy or list(POLICIES) + list(BASELINES)
    jobs = [(s.path, policy, seed, args.duration) for s in scenarios.values() for seed in args.seed or [0]
            for policy in policies]
    started = time.monotonic()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(_run, jobs))
    else:
        results = [_run(job) for job in jobs]
    elapsed = time.monotonic() - started
    rows = [row(r) for r in results]
    print(json.dumps(rows, indent=2) if args.json else markdown(rows) if args.markdown else table(rows), flush=True)
    print("\n".join(verdicts(rows)), file=sys.stderr if args.json else sys.stdout)
    simulated_h = sum(r.duration_s * len(r.guests) for r in results) / 3600
    print(f"{len(results)} runs, {simulated_h:.0f} guest-hours simulated in {elapsed:.1f}s", file=sys.stderr)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plots (./install.sh --bench installs it)", file=sys.stderr)
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_seed = (args.seed or [0])[0]
    for name in scenarios:
        shown = [r for r in results if r.scenario == name and r.seed == first_seed]
        print(f"wrote {plot(shown, out_dir)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
