"""Two other auto-ballooners' rules as policies, so the benchmark measures them on the same hosts.

Their arithmetic is ported from their own sources (the revisions below); what
they read is mapped onto what this daemon observes. They run inside this
daemon's safety checks (fresh stats, a change confirmed before the next,
`bounded()`), which the originals do not have; run them at their own cadence
(`secs: 10`).

Proxmox VE: pve-manager `PVE/AutoBalloon.pm` `compute_alg1` (commit
138cae897ae9c58e75d9f21a7e8b7052a2ccc8a0) as `PVE/Service/pvestatd.pm`
`auto_balloning` calls it every 10 s (commit 00b58c8c351d83da25a935365ade3805564ac7db):
the host's goal is 80 % of its memory used, changes are at most 100 MiB per VM
and cycle. A VM's `balloon_min` (its configured minimum) is the daemon's floor
(`critical`), `maxmem` its cap, `freemem` the guest's MemFree, `shares` the
configured shares. Checked against every vector of pve-manager's
`test/balloontest.pl` (commit 73ed0af158645b3e8db3f1b8f80bc16ffebc2d36).

oVirt MoM as oVirt deploys it: vdsm's `static/etc/vdsm/mom.d/02-balloon.policy`
(oVirt/vdsm commit 4310de52d06b961c5b4b8f1fb33efea62fb33a32), with
`00-defines.policy` (commit 3efdb54ba1ca084f94379c2eba594ded10c2e5f0) and the
`sample-history-length` of vdsm's `mom.conf.in` (commit
cbad9d144d838f11003cf86621e60c9129120e6a); StatAvg as oVirt/mom's `mom/Entity.py`
(commit eef25b5d9bf691facec1846baf637b89233cd742) computes it, the mean of the
samples the Monitor keeps, and the host's figures as `mom/Collectors/HostMemory.py`
(commit 4a91069a200e1d5fa57881593911a04b0cc3850d) reads them. What maps onto what:

- `Host.mem_available` is MemTotal (`total_kib`); `Host "mem_free"` is MemFree +
  Buffers + Cached, which is this daemon's `available_kib` over nodememstats and
  close to MemAvailable read locally. The host's reserve and PSI are not MoM's.
- `guest.balloon_cur` is the size, `"mem_unused"` the guest's MemFree,
  `guest.balloon_max` the cap, `guest.balloon_min` (vdsm: the VM's guaranteed
  memory) the configured minimum, `critical`.
- `balloonEnabled` (0 in 00-defines.policy, set by the engine's cluster option
  "memory balloon optimization") is on: a daemon run with policy `mom` balloons.
- StatAvg over a guest averages `History.recent`, the `TUNING.recent_reports` reports the
  daemon keeps; over the host, the MomHost record below. MoM's Entity.py (Python 2)
  floors the mean to a whole KiB, the port does not: under 1 KiB apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

from ..observation import HostMemory
from ..units import mib
from .records import GROW, HOLD, SHRINK, Candidate, HostView, Policy, Proposal
from .tuning import TUNING

# Both act every 10 s: pvestatd's update time, MoM's own default policy-engine-interval (vdsm's mom.conf
# says 15 s; the window below is counted in samples, as StatAvg counts it).
CYCLE_S = 10.0

# pvestatd.pm and AutoBalloon.pm
PVE_HOST_TARGET = 0.8
PVE_MAX_CHANGE_KIB = 100 * 1024
PVE_MIN_GOAL_KIB = 10 * 1024  # compute_alg1 leaves a goal within 10 MiB alone
PVE_DEFAULT_SHARES = 1000

# 02-balloon.policy
MOM_PRESSURE_THRESHOLD = 0.20  # less host free than this: shrink
MOM_PRESSURE_CRITICAL = 0.05  # this little: give guests less than nothing free, so they swap
MOM_CRITICAL_GUEST_FREE = -0.05  # added to the host's free share under critical pressure
MOM_MIN_GUEST_FREE = 0.20  # what an unconstrained guest would keep free
MOM_MAX_CHANGE = 0.05  # of the current size, per cycle
MOM_MIN_CHANGE = 0.0025  # smaller changes are not worth a balloon operation
MOM_SAMPLE_HISTORY = TUNING.recent_reports  # vdsm's mom.conf sample-history-length (10): the samples StatAvg averages


def _proposal(c: Candidate, target_kib: Optional[float], code: str, why: str) -> Proposal:
    if target_kib is None or int(target_kib) == c.figures.actual_kib:
        return Proposal(HOLD, None, code, why)
    target = int(target_kib)
    return Proposal(GROW if target > c.figures.actual_kib else SHRINK, target, code, f"{why}: {mib(target)} MiB")


# ------------------------------------------------------------------ Proxmox VE

@dataclass(frozen=True)
class PveVm:
    """What compute_alg1 reads of one VM (pvestatd's vmstatus entry). Sizes in any one unit: the daemon
    passes KiB, the tests pve-manager's own bytes."""

    name: str
    balloon: int  # its current size
    balloon_min: int  # its configured minimum: 0 leaves it out
    maxmem: int
    freemem: int = 0  # the guest's MemFree; 0 when it reports none
    shares: Optional[int] = None  # None counts as PVE_DEFAULT_SHARES, 0 leaves it out

    @property
    def weight(self) -> int:
        return self.shares or PVE_DEFAULT_SHARES


def _pve_change(targets: Dict[str, int], idlist: Sequence[PveVm], change: int, max_change: int) -> int:
    """compute_alg1's change_func: spread `change` over the VMs by shares, each moving at most `max_change`
    from its current size, until it is spent or nothing moves; what is left."""
    rest, repeat, progress, done = change, True, 1, set()
    while rest and repeat and progress:
        repeat, progress = False, 0
        live = [vm for vm in idlist if vm.name not in done]
        alloc_old = sum(targets.get(vm.name, vm.balloon) - vm.balloon_min for vm in live)
        shares_total = sum(vm.weight for vm in live)
        alloc_new = alloc_old + rest
        changes = 0
        for vm in live:
            desired = vm.balloon_min + int(alloc_new / shares_total * vm.weight)
            if desired > vm.maxmem or desired < vm.balloon_min:
                desired, repeat = min(max(desired, vm.balloon_min), vm.maxmem), True
            # grows only while memory is handed out; shrinks whichever way, toward the share
            if change > 0 and desired > vm.balloon:
                new = min(vm.balloon + max_change, desired)
            elif desired < vm.balloon:
                new = max(vm.balloon - max_change, desired)
            else:
                done.add(vm.name)
                continue
            if new != vm.balloon:
                step = new - targets.get(vm.name, vm.balloon)
                targets[vm.name] = new
                if step:
                    changes += step
                    progress += abs(new - vm.balloon)
                    repeat = True
        rest -= changes
    return rest


def compute_alg1(vms: Iterable[PveVm], goal: int, max_change: int, min_goal: int) -> Dict[str, int]:
    """The new size of each VM that changes: with `goal` to hand out (or, negative, to take back) beyond
    `min_goal`, VMs under memory pressure get it first, VMs with free memory give it first; only when
    they cannot move is it spread over all."""
    idlist = [vm for vm in vms if vm.balloon and vm.balloon_min and vm.shares != 0]
    roomy = [vm for vm in idlist if vm.freemem > vm.balloon_min * 0.25 and vm.balloon >= vm.balloon_min]
    pressed = [vm for vm in idlist if vm not in roomy]
    targets: Dict[str, int] = {}
    if goal > min_goal:
        rest = _pve_change(targets, pressed, goal, max_change)
        if rest >= goal:
            _pve_change(targets, idlist, rest, max_change)
    elif goal < -min_goal:
        rest = _pve_change(targets, roomy, goal, max_change)
        if rest <= goal:
            _pve_change(targets, idlist, rest, max_change)
    return targets


def _pve_goal_kib(host: HostMemory) -> int:
    """pvestatd: memused is MemTotal - (MemFree + Buffers + Cached), which a host read through
    nodememstats gives as its available figure."""
    used = host.total_kib - host.available_kib
    return int(host.total_kib * PVE_HOST_TARGET - used)


def _pve_vm(c: Candidate) -> PveVm:
    return PveVm(c.name, c.figures.actual_kib, c.settings.floor_kib, c.cap_kib, c.figures.unused_kib or 0,
                 c.settings.shares)


def proxmox(view: HostView) -> Dict[str, Proposal]:
    """compute_alg1: move the host toward PVE_HOST_TARGET used, growing VMs under memory pressure
    first and shrinking VMs with free memory first, by shares."""
    if view.host is None:
        return {}
    goal = _pve_goal_kib(view.host)
    targets = compute_alg1((_pve_vm(c) for c in view.candidates), goal, PVE_MAX_CHANGE_KIB, PVE_MIN_GOAL_KIB)
    why = f"host goal {mib(goal)} MiB"
    return {c.name: _proposal(c, targets.get(c.name), "proxmox", why)
            for c in view.candidates if c.settings.floor_kib > 0}


# ------------------------------------------------------------------ oVirt MoM

@dataclass(frozen=True)
class MomHost:
    """MoM's host Monitor as 02-balloon.policy reads it: mem_free of the last MOM_SAMPLE_HISTORY samples,
    oldest first, and MemTotal of the newest. Immutable: `saw` gives the next record, so the policy
    stays a pure function of it."""

    free_kib: Tuple[int, ...] = ()
    total_kib: int = 0

    def saw(self, host: HostMemory) -> MomHost:
        return MomHost((self.free_kib + (host.available_kib,))[-MOM_SAMPLE_HISTORY:], host.total_kib)

    def free_share(self) -> Optional[float]:
        """host_free_percent: StatAvg "mem_free" over Host.mem_available; None without samples or a total
        (MoM's policy run would stop on the division)."""
        if not self.free_kib or self.total_kib <= 0:
            return None
        return _avg(self.free_kib) / self.total_kib


def _avg(values: Iterable[int]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _mom_used_kib(c: Candidate) -> float:
    """StatAvg "balloon_cur" - StatAvg "mem_unused", over the reports History keeps (the current one
    alone when it keeps none)."""
    samples = c.history.recent or ((c.figures.actual_kib, c.figures.unused_kib or 0),)
    return _avg(a for a, _ in samples) - _avg(u for _, u in samples)


def mom_guest_free(host_free: float) -> float:
    """guest_free_percent: the free share the policy leaves a guest, the host's own free share scaled from
    the threshold (at 20 % host free a guest keeps 20 %, at 10 % it keeps 10 %); under critical pressure
    below zero, so the guest swaps."""
    if host_free <= MOM_PRESSURE_CRITICAL:
        return MOM_CRITICAL_GUEST_FREE + host_free
    return MOM_MIN_GUEST_FREE * (host_free / MOM_PRESSURE_THRESHOLD)


def _mom_wanted_kib(c: Candidate, guest_free: float) -> float:
    """balloon_min: never below the guaranteed minimum, else what the guest uses plus its free share."""
    return max(c.settings.floor_kib, _mom_used_kib(c) + guest_free * c.figures.actual_kib)


def _mom_big_enough(c: Candidate, size: float) -> bool:
    return abs(size - c.figures.actual_kib) > MOM_MIN_CHANGE * c.figures.actual_kib


def _mom_shrink(c: Candidate, guest_free: float) -> Optional[float]:
    cur = c.figures.actual_kib
    size = max(cur * (1 - MOM_MAX_CHANGE), _mom_wanted_kib(c, guest_free))
    # the floor can lie above the size: then the guest is left alone, not grown
    return size if size <= cur and _mom_big_enough(c, size) else None


def _mom_grow(c: Candidate, guest_free: float) -> Optional[float]:
    cur = c.figures.actual_kib
    if cur >= c.cap_kib:
        return None
    size = max(cur * (1 + MOM_MAX_CHANGE), _mom_wanted_kib(c, guest_free))
    size = min(size, c.cap_kib)  # the maximum last: above any floor
    return size if _mom_big_enough(c, size) else None


def _mom_one(c: Candidate, host_free: float) -> Tuple[Optional[float], str]:
    """One guest's target and why. The guaranteed-minimum rule runs after the ballooning one and
    overrides it; a guest that reports no MemFree gets that rule only."""
    if c.figures.actual_kib < c.settings.floor_kib:
        return c.settings.floor_kib, f"below its guaranteed {mib(c.settings.floor_kib)} MiB"
    why = f"host free {host_free:.1%}"
    if c.figures.unused_kib is None:
        return None, f"{why}, but no MemFree reported: MoM leaves it"
    guest_free = mom_guest_free(host_free)
    if host_free < MOM_PRESSURE_THRESHOLD:
        return _mom_shrink(c, guest_free), f"{why} < {MOM_PRESSURE_THRESHOLD:.0%}, guest keeps {guest_free:.1%}"
    return _mom_grow(c, guest_free), f"{why}, guest keeps {guest_free:.1%}"


def mom_rules(view: HostView, host: MomHost) -> Dict[str, Proposal]:
    """02-balloon.policy over the candidates, the host as `host` has sampled it: below
    MOM_PRESSURE_THRESHOLD host free, shrink every guest by up to 5 % a cycle toward what it uses plus a free
    share that falls with the host's; otherwise grow it by at least 5 % toward what it uses plus the host's
    free share, up to its maximum. Without a host total nothing is decided."""
    host_free = host.free_share()
    if host_free is None:
        return {c.name: Proposal(HOLD, None, "mom", "no host memory total (not watched, or 0): MoM's policy cannot run")
                for c in view.candidates}
    out = {}
    for c in view.candidates:
        target, why = _mom_one(c, host_free)
        out[c.name] = _proposal(c, target, "mom", why)
    return out


def mom(view: HostView) -> Dict[str, Proposal]:
    """The policy as a cycle runs it: StatAvg "mem_free" over the host's recent reads the daemon kept
    (HostView.host_recent), or this one alone."""
    if view.host is None:
        return mom_rules(view, MomHost())
    recent = view.host_recent or (view.host.available_kib,)
    return mom_rules(view, MomHost(recent[-MOM_SAMPLE_HISTORY:], view.host.total_kib))


PEERS: Dict[str, Policy] = {"proxmox": proxmox, "mom": mom}
