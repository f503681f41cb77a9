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
configured shares.

oVirt MoM: `doc/balloon.rules` (oVirt/mom, commit
7e561ce3ef467048b1a993ae2e2a5ba85d8e8cdb) with its constants. Host free is
MemFree + Buffers + Cached over MemTotal (MoM's HostMemory collector); a guest's
`balloon_min` (libvirt's `<memtune><min_guarantee>`) is the floor; `StatAvg` is
the mean of the last RECENT_REPORTS reports (History.recent), the host's
figure is the current one. In `grow_guest` the rules read `guest_free_percent`,
which only `shrink_guest` defines; the port uses `min_guest_free_percent`,
what the rules say an unconstrained guest wants.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from .host import HostMemory
from .policy import GROW, HOLD, SHRINK, Candidate, HostView, Policy, Proposal
from .units import mib

# Both act every 10 s: pvestatd's update time, MoM's default policy-engine-interval.
CYCLE_S = 10.0

# pvestatd.pm and AutoBalloon.pm
PVE_HOST_TARGET = 0.8
PVE_MAX_CHANGE_KIB = 100 * 1024
PVE_MIN_GOAL_KIB = 10 * 1024
PVE_DEFAULT_SHARES = 1000

# balloon.rules
MOM_PRESSURE_THRESHOLD = 0.20
MOM_PRESSURE_CRITICAL = 0.05
MOM_MIN_GUEST_FREE = 0.20
MOM_MAX_CHANGE = 0.05
MOM_MIN_CHANGE = 0.0025


def _proposal(c: Candidate, target_kib: Optional[float], code: str, why: str) -> Proposal:
    if target_kib is None or int(target_kib) == c.figures.actual_kib:
        return Proposal(HOLD, None, code, why)
    target = int(target_kib)
    return Proposal(GROW if target > c.figures.actual_kib else SHRINK, target, code, f"{why}: {mib(target)} MiB")


# ------------------------------------------------------------------ Proxmox VE

def _pve_change(targets: Dict[str, float], idlist: List[Candidate], change_kib: float) -> float:
    """compute_alg1's change_func: spread `change_kib` over the VMs by shares, each moving at most
    PVE_MAX_CHANGE_KIB from its current size, until it is spent or nothing moves; what is left."""
    rest, repeat, progress, done = change_kib, True, 1.0, set()
    while rest and repeat and progress:
        repeat, progress = False, 0.0
        live = [c for c in idlist if c.name not in done]
        alloc_old = sum(targets.get(c.name, c.figures.actual_kib) - c.settings.critical_kib for c in live)
        shares_total = sum(c.settings.shares or PVE_DEFAULT_SHARES for c in live)
        alloc_new = alloc_old + rest
        changes = 0.0
        for c in live:
            balloon, floor, cap = c.figures.actual_kib, c.settings.critical_kib, c.cap_kib
            desired = floor + int(alloc_new / shares_total * (c.settings.shares or PVE_DEFAULT_SHARES))
            if desired > cap or desired < floor:
                desired, repeat = min(max(desired, floor), cap), True
            if change_kib > 0 and desired > balloon:
                new = min(balloon + PVE_MAX_CHANGE_KIB, desired)
            elif desired < balloon:
                new = max(balloon - PVE_MAX_CHANGE_KIB, desired)
            else:
                done.add(c.name)
                continue
            if new != balloon:
                change = new - targets.get(c.name, balloon)
                targets[c.name] = new
                if change:
                    changes += change
                    progress += abs(new - balloon)
                    repeat = True
        rest -= changes
    return rest


def _pve_goal_kib(host: HostMemory) -> int:
    """pvestatd: memused is MemTotal - (MemFree + Buffers + Cached), which a host read through
    nodememstats gives as its available figure."""
    used = host.total_kib - host.available_kib
    return int(host.total_kib * PVE_HOST_TARGET - used)


def proxmox(view: HostView) -> Dict[str, Proposal]:
    """compute_alg1: move the host toward PVE_HOST_TARGET used, growing VMs under memory pressure
    first and shrinking VMs with free memory first, by shares."""
    if view.host is None:
        return {}
    idlist = [c for c in view.candidates if c.settings.critical_kib > 0]
    roomy = [c for c in idlist if c.figures.unused_kib and c.figures.unused_kib > c.settings.critical_kib * 0.25
             and c.figures.actual_kib >= c.settings.critical_kib]
    pressed = [c for c in idlist if c not in roomy]
    goal = _pve_goal_kib(view.host)
    targets: Dict[str, float] = {}
    if goal > PVE_MIN_GOAL_KIB:
        rest = _pve_change(targets, pressed, goal)
        if rest >= goal:
            _pve_change(targets, idlist, rest)
    elif goal < -PVE_MIN_GOAL_KIB:
        rest = _pve_change(targets, roomy, goal)
        if rest <= goal:
            _pve_change(targets, idlist, rest)
    why = f"host goal {mib(goal)} MiB"
    return {c.name: _proposal(c, targets.get(c.name), "proxmox", why) for c in idlist}


# ------------------------------------------------------------------ oVirt MoM

def _avg(values: Iterable[int]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _mom_used_kib(c: Candidate) -> float:
    """StatAvg(balloon_cur) - StatAvg(mem_unused), over the reports History keeps."""
    samples = c.history.recent or ((c.figures.actual_kib, c.figures.unused_kib or 0),)
    return _avg(a for a, _ in samples) - _avg(u for _, u in samples)


def _mom_big_enough(c: Candidate, size: float) -> bool:
    return abs(size - c.figures.actual_kib) > MOM_MIN_CHANGE * c.figures.actual_kib


def _mom_shrink(c: Candidate, host_free: float) -> Optional[float]:
    if host_free <= MOM_PRESSURE_CRITICAL:
        guest_free = -0.05 + host_free  # critical: force the guest to swap
    else:
        guest_free = MOM_MIN_GUEST_FREE * (host_free / MOM_PRESSURE_THRESHOLD)
    cur = c.figures.actual_kib
    balloon_min = min(c.settings.critical_kib, _mom_used_kib(c) + guest_free * cur)
    size = max(cur * (1 - MOM_MAX_CHANGE), balloon_min)
    return size if size <= cur and _mom_big_enough(c, size) else None


def _mom_grow(c: Candidate) -> Optional[float]:
    cur = c.figures.actual_kib
    if cur >= c.cap_kib:
        return None
    balloon_min = min(c.settings.critical_kib, _mom_used_kib(c) + MOM_MIN_GUEST_FREE * cur)
    size = max(min(cur * (1 + MOM_MAX_CHANGE), c.cap_kib), balloon_min)
    return size if _mom_big_enough(c, size) else None


def mom(view: HostView) -> Dict[str, Proposal]:
    """balloon.rules: below MOM_PRESSURE_THRESHOLD host free, shrink every guest by up to 5 % a cycle,
    harder the less the host has; otherwise grow every guest by 5 % a cycle up to its maximum."""
    if view.host is None:
        return {}
    host_free = view.host.available_kib / view.host.total_kib
    pressed = host_free < MOM_PRESSURE_THRESHOLD
    why = f"host free {host_free:.0%}"
    return {c.name: _proposal(c, _mom_shrink(c, host_free) if pressed else _mom_grow(c), "mom", why)
            for c in view.candidates}


PEERS: Dict[str, Policy] = {"proxmox": proxmox, "mom": mom}
