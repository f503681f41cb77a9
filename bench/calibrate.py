#!/usr/bin/env python3
"""Calibration: the `calibrate` scenario in the simulator and on a real guest, side by side.

    sudo .venv/bin/python bench/calibrate.py [--policy step|target] [--json] [--every S] [--duration S]
                                             [--scenario NAME|PATH] [--seed N] [--save FILE] [--no-probe]

For each policy (default: step and target):
  1. the scenario runs in the simulator, in virtual time (the real daemon's code against the model);
  2. the same scenario is replayed on a real guest booted by the e2e harness (lib/balloon2395_testkit:
     calibration_replay.py): the real `balloon-2395 --policy P` runs against a busybox guest of the
     scenario's current / maximum size, whose memory hog grows at the scenario's rate and is freed at
     the scenario's time; dommemstat is sampled every 0.5 s.
It prints, per policy, the two runs every --every seconds (actual MiB, usable %) and a summary:
the idle size reached before the ramp, the lowest usable % during it, the time from the ramp's
start until usable is back at the band's minimum, peak actual, OOM kills, setmem calls (the
daemon's grow/shrink log lines), the mean absolute difference of actual and usable %, and what the
real run says about stats lag and balloon speed. After each real run, with the daemon stopped, it
measures the guest facts the model has constants for (balloon speed both ways, memory outside
MemTotal, how much a process can hold before the OOM killer takes it) and prints them next to the
model's values (--no-probe skips that).

Needs root, libvirt and the e2e guest assets (sudo bash tests/e2e/prepare.sh); exits 2 with the
reason when they are missing. Only domains it creates (b2395e2e-*) are touched, and removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

from balloon2395.config import Config  # noqa: E402
from balloon2395.decide.cycle import POLICIES  # noqa: E402
from balloon2395.settings import DomainSettings
from balloon2395.sim.scenario import Scenario, ScenarioError, load  # noqa: E402
from balloon2395_testkit.daemon_process import DAEMON  # noqa: E402
from balloon2395_testkit.guests import exit_on_sigterm  # noqa: E402
from balloon2395_testkit.prepared import check_prerequisites  # noqa: E402
from balloon2395_testkit.waiting import HarnessError  # noqa: E402
from calibration.compare import Comparison, Doc  # noqa: E402
from calibration.plan import Plan, model_facts, simulate  # noqa: E402
from calibration.replay import replay  # noqa: E402
from calibration.report import render  # noqa: E402

PROG_NAME = "calibrate.py"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES),
                        help="only this policy (repeatable; default: step and target)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--every", type=float, default=5.0, metavar="S", help="side-by-side rows every S seconds (5)")
    parser.add_argument("--duration", type=float, metavar="S", help="seconds to run (default: the scenario's)")
    parser.add_argument("--scenario", default="calibrate", metavar="NAME|PATH", help="default: calibrate")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip measuring the real guest's balloon speed, reserved memory and OOM point "
                             "after each run")
    return parser.parse_args(argv)


def planned(args: argparse.Namespace, config: Config) -> Tuple[Scenario, Plan]:
    """The scenario and its plan; ScenarioError when it cannot be replayed as asked."""
    scenario = load(args.scenario)
    plan = Plan.of(scenario, args.duration, config)
    if plan.free_at_s > plan.duration_s:
        raise ScenarioError(f"--duration {plan.duration_s:g} ends before the workload is freed "
                            f"(t={plan.free_at_s:g}s)")
    return scenario, plan


def not_ready() -> Optional[str]:
    reason = check_prerequisites()
    if reason is None and not os.access(DAEMON, os.X_OK):
        reason = f"{DAEMON} is not executable"
    return reason


def compare(scenario: Scenario, plan: Plan, policy: str, args: argparse.Namespace, config: Config,
            log_dir: Path) -> Doc:
    """One policy: the simulated run, the real replay, the comparison."""
    sim = simulate(scenario, plan, policy, args.seed, config)
    real = replay(plan, policy, log_dir, probing=not args.no_probe)
    probed = real.notes.get("probe")
    size = probed["size_mib"] if isinstance(probed, dict) else plan.current_mib
    return Comparison(policy, plan, sim, real, args.every, model_facts(scenario, plan, size)).as_dict()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # as the real daemon runs in the replay (balloon2395_testkit.daemon_process): no burst wait in a run of
    # minutes, the band shrinking idle guests
    config = Config(defaults=DomainSettings(burst_wait_s=0, idle_shrink="always"))
    try:
        scenario, plan = planned(args, config)
    except ScenarioError as exc:
        print(f"{PROG_NAME}: {exc}", file=sys.stderr)
        return 2
    reason = not_ready()
    if reason:
        print(f"{PROG_NAME}: cannot replay on a real guest: {reason}", file=sys.stderr)
        return 2
    exit_on_sigterm()

    log_dir = Path(tempfile.mkdtemp(prefix="balloon-2395-calibrate-"))
    started = time.monotonic()
    results = []
    for policy in args.policy or ["step", "target"]:
        print(f"{PROG_NAME}: {policy}: simulating, then replaying on a real guest "
              f"(~{plan.duration_s + 15:.0f}s)", file=sys.stderr, flush=True)
        try:
            results.append(compare(scenario, plan, policy, args, config, log_dir))
        except (HarnessError, subprocess.SubprocessError, OSError) as exc:
            print(f"{PROG_NAME}: {policy}: the real replay failed (its guest is removed): {exc}", file=sys.stderr)
            return 1
        if not args.json:
            print(render(results[-1]) + "\n", flush=True)
    elapsed = time.monotonic() - started
    document = {"scenario": plan.scenario, "elapsed_s": round(elapsed, 1), "runs": results}
    if args.json:
        print(json.dumps(document, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(document, indent=2) + "\n")
    print(f"{PROG_NAME}: {len(results)} policies in {elapsed:.0f}s; daemon logs in {log_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
