"""The simulated host speaking virsh, in process (SimVirsh) or as an executable.

Output and errors come from fake_virsh's FakeHost over a state built from
the model at the moment of the call, so the formats are those of real virsh
9.0 and are written once. What a command changes (setmem, a stats period) is
caught as FakeHost writes it and handed back to the model.

As an executable, in wall-clock time (the daemon checks stats ages against
its own clock), with the state in $BALLOON2395_SIM_STATE:
    python -m balloon2395.sim.virsh --sim-init SCENARIO [--seed N]
    python -m balloon2395.sim.virsh [-c URI] domstats --balloon --list-running
    python -m balloon2395.sim.virsh [-c URI]     # commands on stdin: virsh's interactive mode
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from typing import Any, List, Tuple

from .fake_virsh import FakeHost, interactive
from .host import SimGuest, SimHost
from .inprocess import InProcessVirsh
from .scenario import ScenarioError, load

STATE_ENV = "BALLOON2395_SIM_STATE"


class _Recorded(dict):
    """A domain as FakeHost sees it, remembering what FakeHost writes into it."""

    def __init__(self, guest: SimGuest, *args: Any) -> None:
        super().__init__(*args)
        self.guest = guest

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key == "actual_kib":  # setmem: the balloon's new target, reached later
            self.guest.set_target(int(value))
        elif key == "period":
            self.guest.period_s = int(value)


def _domain(number: int, g: SimGuest) -> _Recorded:
    s = g.stats
    stats = {"swap_in": s.swap_in_kib, "swap_out": s.swap_out_kib, "major_fault": s.major_fault,
             "minor_fault": s.minor_fault, "unused": s.free_kib, "available": s.total_kib, "usable": s.usable_kib,
             "disk_caches": s.cache_kib, "hugetlb_pgalloc": 0, "hugetlb_pgfail": 0}
    return _Recorded(g, {
        "name": g.name, "uuid": g.uuid, "id": number, "state": "running", "actual_kib": g.state.actual_kib,
        "maximum_kib": g.plan.spec.maximum_kib, "period": g.period_s, "balloon": "virtio", "stats": stats,
        "last_update": s.last_update, "boot_update": s.last_update, "rss_kib": g.rss_kib,
        "autodeflate": g.plan.spec.deflate_on_oom, "free_page_reporting": g.plan.spec.free_page_reporting,
    })


def answer(host: SimHost, command: str, args: List[str]) -> Tuple[str, str, int]:
    """(stdout, stderr, exit status) of `virsh COMMAND ARGS...` on the simulated host, now. A guest
    lost to the host's OOM killer is gone, as a domain whose QEMU died is; the others keep their ids."""
    mem = host.memory()
    state = {"domains": [_domain(i + 1, g) for i, g in enumerate(host.guests) if g.lost_at_s is None],
             "host": {"total_kib": mem.total_kib, "free_kib": mem.free_kib, "buffers_kib": 0,
                      "cached_kib": mem.cache_kib}}
    stdout, stderr, code, _ = FakeHost(state).call(command, args)
    return stdout, stderr, code


class SimVirsh(InProcessVirsh):
    """The daemon's virsh commands, answered in process by the simulated host."""

    def __init__(self, host: SimHost) -> None:
        super().__init__(lambda command, args: answer(host, command, args))
        self.host = host


def _init(path: str, args: List[str]) -> int:
    if len(args) not in (1, 3) or (len(args) == 3 and (args[1] != "--seed" or not args[2].isdigit())):
        sys.stderr.write("usage: python -m balloon2395.sim.virsh --sim-init SCENARIO [--seed N]\n")
        return 2
    try:
        host = SimHost(load(args[0]), int(args[2]) if len(args) == 3 else 0, epoch=float(int(time.time())))
    except ScenarioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(host.to_json(), handle)
    return 0


def _answered(path: str, args: List[str]) -> Tuple[str, str, int]:
    with open(path, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one call at a time moves the model
        host = SimHost.from_json(json.load(handle))
        host.advance_to(time.time())
        stdout, stderr, code = answer(host, args[0], args[1:])
        handle.seek(0)
        handle.truncate()
        json.dump(host.to_json(), handle)
    return stdout, stderr, code


def main(argv: List[str]) -> int:
    args = list(argv)
    if len(args) >= 2 and args[0] in ("-c", "--connect"):
        args = args[2:]
    path = os.environ.get(STATE_ENV)
    if not path:
        sys.stderr.write(f"error: set {STATE_ENV} to the simulator's state file\n")
        return 1
    if args[:1] == ["--sim-init"]:
        return _init(path, args[1:])
    if not args:  # virsh's interactive mode, for balloon-2395's session
        return interactive(lambda words: _answered(path, words) + (False,), quiet=False)
    stdout, stderr, code = _answered(path, args)
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
