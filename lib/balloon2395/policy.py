"""Deciding: a pure function from one domain's observation, its settings and
what the daemon remembers of it, to one decision. No I/O, no clock reads.

The safety rules (exclusions, freshness, waiting for the last change to land)
come first and are shared by every policy; a policy only proposes a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import DomainSettings
from .domain_xml import DomainFacts
from .units import mib
from .virsh_output import BalloonStats

GROW, SHRINK, HOLD, WAIT, SKIP = "grow", "shrink", "hold", "wait", "skip"
CHANGES = (GROW, SHRINK)

FUTURE_TOLERANCE_S = 2.0  # host clock jitter between virsh's stamp and ours
SETTLE_S = 5.0  # a balloon that has not moved at all by then never will
TOLERANCE_KIB = 1024  # 'reached the target': QEMU rounds to pages, guests lag a little
DEADBAND_KIB = 32 * 1024  # target policy: smaller moves are churn, not control
# Major faults also come from reading files; only a rate like this, with usable not
# plentiful, says the guest is paging its working set back in.
MAJOR_FAULTS_PER_S = 100
GROW_PAD_KIB = 64 * 1024  # a grow leaves this above the headroom, so the next 1 MiB is no new grow
BURST_DECAY_PER_S = 0.999  # a burst is remembered for tens of minutes (half-life ~12 min)
PAGED_HOLD_S = 600  # after the guest paged its working set back in, no shrink for this long


@dataclass(frozen=True)
class Observation:
    stats: BalloonStats
    facts: Optional[DomainFacts] = None  # None: dumpxml could not be read yet
    stats_since: Optional[float] = None  # when the daemon switched the stats period on
    uuid: Optional[str] = None  # what every call names it by; None: the read gave it no single uuid
    problem: Optional[str] = None  # why the read cannot be trusted for it (given twice, ...)

    @property
    def name(self) -> str:
        return self.stats.name


@dataclass(frozen=True)
class History:
    """What the daemon remembers of a domain between cycles."""

    changed_at: Optional[float] = None  # wall time of a setmem not yet confirmed by fresh stats
    from_kib: Optional[int] = None
    target_kib: Optional[int] = None
    unresponsive: bool = False  # a setmem never took effect: leave the domain alone
    # the last fresh report, to see swap-in, major faults and used memory rise
    seen_update: Optional[int] = None
    seen_swap_in_kib: Optional[int] = None
    seen_major_fault: Optional[int] = None
    seen_used_kib: Optional[int] = None
    burst_kib: float = 0.0  # largest recent rise of used between two reports, decaying
    paged_at: Optional[int] = None  # report time of the last sign of paging

    def after_change(self, now: float, from_kib: int, target_kib: int) -> "History":
        return replace(self, changed_at=now, from_kib=from_kib, target_kib=target_kib)

    def settled(self) -> "History":
        return replace(self, changed_at=None, from_kib=None, target_kib=None)

    def saw(self, stats: BalloonStats) -> "History":
        used = stats.actual_kib - stats.usable_kib
        burst = self.burst_kib
        if self.seen_update is not None:
            burst *= BURST_DECAY_PER_S ** (stats.last_update - self.seen_update)
            burst = max(burst, used - self.seen_used_kib)
        return replace(self, seen_update=stats.last_update, seen_swap_in_kib=stats.swap_in_kib,
                       seen_major_fault=stats.major_fault, seen_used_kib=used, burst_kib=burst)


@dataclass(frozen=True)
class Signals:
    """What a guest's recent reports say beyond its current figures."""

    paging: bool = False  # swap-in or major faults rising since the last report
    swapped_kib: int = 0  # an estimate of what it has out in swap (swap_out - swap_in)
    burst_kib: int = 0  # how fast its used memory has jumped lately, between two reports
    paged_lately: bool = False  # paging seen within PAGED_HOLD_S: shrinking again would bring it back


@dataclass(frozen=True)
class Decision:
    name: str
    action: str
    code: str  # stable reason key, for log-once and metrics
    reason: str  # the same for a person, with the numbers
    actual_kib: Optional[int] = None
    target_kib: Optional[int] = None
    history: History = History()

    @property
    def changes(self) -> bool:
        return self.action in CHANGES


@dataclass(frozen=True)
class Limits:
    """Limits that come from the config, not from one domain."""

    stale_after_s: float = 5.0


@dataclass(frozen=True)
class HostMemory:
    """The host's side: what it has, what it can still give, what it keeps for itself."""

    total_kib: int
    available_kib: int
    reserve_kib: int
    pressure: bool = False  # PSI says tasks already stall on memory

    @property
    def spare_kib(self) -> int:
        return self.available_kib - self.reserve_kib


# A policy gets fresh, sane figures and the signals of its recent reports, and
# returns (action, target KiB, code, reason).
Proposal = Tuple[str, Optional[int], str, str]
Block = Tuple[str, str, str]  # (action, code, reason)


def usable_pct(stats: BalloonStats) -> int:
    """Integer percent, as the original's shell arithmetic computed it."""
    return stats.usable_kib * 100 // stats.actual_kib


def step(stats: BalloonStats, settings: DomainSettings, cap_kib: int, signals: Signals) -> Proposal:
    """The original's rule with its unit defect fixed: fixed steps across a band."""
    actual, pct = stats.actual_kib, usable_pct(stats)
    if pct < settings.minimal:
        target = min(actual + settings.addram_kib, cap_kib)
        if target <= actual:
            return HOLD, None, "at-maximum", f"usable {pct}% < {settings.minimal:g}% but at maximum {mib(cap_kib)} MiB"
        return GROW, target, "below-band", f"usable {pct}% < {settings.minimal:g}%"
    if pct > settings.maximal:
        target = actual - settings.rmram_kib
        if target < settings.critical_kib:
            return HOLD, None, "at-floor", f"usable {pct}% > {settings.maximal:g}% but floor is {mib(settings.critical_kib)} MiB"
        return SHRINK, target, "above-band", f"usable {pct}% > {settings.maximal:g}%"
    return HOLD, None, "in-band", f"usable {pct}% within {settings.minimal:g}-{settings.maximal:g}%"


def target_size_kib(stats: BalloonStats, settings: DomainSettings, signals: Signals = Signals()) -> int:
    """The size that puts usable in the middle of the band, with at least the headroom
    (raised to the guest's recent bursts) usable and room for what it has swapped out."""
    used = stats.actual_kib - stats.usable_kib + (signals.swapped_kib if signals.paging else 0)
    middle = (settings.minimal + settings.maximal) / 200.0
    headroom = max(settings.headroom_kib, signals.burst_kib)
    size = max(math.ceil(used / (1.0 - middle)), used + headroom + GROW_PAD_KIB, settings.critical_kib)
    return -(-size // 1024) * 1024  # whole MiB: what logs show is what the guest gets


def target(stats: BalloonStats, settings: DomainSettings, cap_kib: int, signals: Signals) -> Proposal:
    """Grow to the target in one move; shrink toward it at most `max_shrink` at a time."""
    actual, usable, pct = stats.actual_kib, stats.usable_kib, usable_pct(stats)
    want = min(target_size_kib(stats, settings, signals), cap_kib)
    if signals.paging:
        want = max(want, min(actual + settings.addram_kib, cap_kib))
    headroom = max(settings.headroom_kib, signals.burst_kib)
    if pct < settings.minimal or usable < headroom or signals.paging:
        why = ("swapping in or major faults rising" if signals.paging else
               f"usable {pct}% < {settings.minimal:g}%" if pct < settings.minimal else
               f"usable {mib(usable)} MiB < headroom {mib(headroom)} MiB")
        if want <= actual:
            return HOLD, None, "at-maximum", f"{why} but at maximum {mib(cap_kib)} MiB"
        code = "paging" if signals.paging else "below-band" if pct < settings.minimal else "headroom"
        return GROW, want, code, why
    if pct > settings.maximal and signals.paged_lately:
        return HOLD, None, "paged-lately", f"usable {pct}% > {settings.maximal:g}% but it paged within {PAGED_HOLD_S}s"
    if pct > settings.maximal and actual - want >= DEADBAND_KIB:
        goal = max(want, actual - settings.max_shrink_kib)
        return SHRINK, goal, "above-band", f"usable {pct}% > {settings.maximal:g}%: toward {mib(want)} MiB"
    if pct > settings.maximal:
        return HOLD, None, "at-floor", (f"usable {pct}% > {settings.maximal:g}% but at its target "
                                         f"(floor {mib(settings.critical_kib)} MiB, headroom {mib(headroom)} MiB)")
    return HOLD, None, "in-band", f"usable {pct}% within {settings.minimal:g}-{settings.maximal:g}%"


POLICIES: Dict[str, Callable[[BalloonStats, DomainSettings, int, Signals], Proposal]] = {"step": step, "target": target}


def _signals(stats: BalloonStats, settings: DomainSettings, history: History) -> Signals:
    """Swap-in or a major-fault rate rising since the last fresh report; swap in use; bursts."""
    swapped = max((stats.swap_out_kib or 0) - (stats.swap_in_kib or 0), 0)
    burst = int(history.burst_kib)
    lately = history.paged_at is not None and stats.last_update - history.paged_at < PAGED_HOLD_S
    if history.seen_update is None or stats.last_update <= history.seen_update:
        return Signals(False, swapped, burst, lately)
    paging = (stats.swap_in_kib is not None and history.seen_swap_in_kib is not None
              and stats.swap_in_kib > history.seen_swap_in_kib)
    if not paging and stats.major_fault is not None and history.seen_major_fault is not None:
        rate = (stats.major_fault - history.seen_major_fault) / (stats.last_update - history.seen_update)
        paging = rate > MAJOR_FAULTS_PER_S and usable_pct(stats) <= settings.maximal
    return Signals(paging, swapped, burst, lately or paging)


def cap_kib(stats: BalloonStats, settings: DomainSettings) -> Optional[int]:
    """The most a domain may have: its own maximum, lowered by a configured one."""
    if stats.maximum_kib is None:
        return None
    if settings.maximum_kib is None:
        return stats.maximum_kib
    return min(stats.maximum_kib, settings.maximum_kib)


def _eligibility(obs: Observation, settings: DomainSettings, history: History, now: float,
                 limits: Limits) -> Optional[Block]:
    """Why this domain must not be acted on now, or None."""
    stats, facts = obs.stats, obs.facts
    if settings.exclude:
        return SKIP, "excluded", "excluded by config"
    if settings.invalid:
        return SKIP, "bad-metadata", f"its settings metadata is not usable: {settings.invalid}"
    if obs.problem:
        return SKIP, "inconsistent-read", f"inconsistent read: {obs.problem}"
    if obs.uuid is None:
        return WAIT, "no-uuid", "not in the read's list of running domains (started during the read?)"
    if facts is None:
        return WAIT, "no-xml", "domain XML not read yet"
    if facts.windows and not settings.manage_windows:
        return SKIP, "windows", f"Windows guest ({facts.windows})"
    if history.unresponsive:
        return SKIP, "unresponsive", "an earlier setmem never took effect (no balloon driver in the guest?)"
    if facts.balloon_model != "virtio":
        return SKIP, "no-balloon", f"no virtio balloon device (model {facts.balloon_model or 'absent'})"
    if not stats.actual_kib:
        return SKIP, "no-size", "no balloon size reported"
    if not stats.maximum_kib:
        return SKIP, "no-maximum", f"domain maximum {'0' if stats.maximum_kib == 0 else 'unknown'}"
    if stats.actual_kib > stats.maximum_kib:
        return SKIP, "inconsistent", (f"inconsistent stats: actual {mib(stats.actual_kib)} MiB > "
                                      f"maximum {mib(stats.maximum_kib)} MiB")
    if settings.maximum_kib is not None and stats.actual_kib > settings.maximum_kib:
        return SKIP, "above-cap", (f"actual {mib(stats.actual_kib)} MiB is above the configured maximum "
                                   f"{mib(settings.maximum_kib)} MiB: left to the operator")
    if stats.usable_kib is None or stats.last_update is None:
        return SKIP, "no-usable", ("guest reports no usable memory (stats period off, or no balloon driver); "
                                   "the daemon sets a stats period, a dry run or a view never does")
    if facts.stats_period_s is None:
        return SKIP, "no-period", ("no stats period: the figures are frozen at boot; "
                                   "the daemon sets one, a dry run or a view never does")
    if obs.stats_since is not None and stats.last_update <= obs.stats_since:
        return WAIT, "stats-starting", "waiting for the first report since the stats period was set"
    if stats.last_update > now + FUTURE_TOLERANCE_S:
        return SKIP, "future-stats", f"stats stamped {stats.last_update - now:.0f}s in the future"
    age = now - stats.last_update
    if age > limits.stale_after_s:
        return SKIP, "stale-stats", f"stats stale: last update {age:.0f}s ago"
    if stats.usable_kib > stats.actual_kib:
        return SKIP, "inconsistent", f"inconsistent stats: usable {mib(stats.usable_kib)} MiB > actual {mib(stats.actual_kib)} MiB"
    return None


def _settle(stats: BalloonStats, history: History, now: float) -> Tuple[History, Optional[Block]]:
    """Follow the last change until fresh stats confirm it; flag a balloon that never moves."""
    if history.changed_at is None:
        return history, None
    if stats.last_update <= history.changed_at:
        return history, (WAIT, "pending", "waiting for stats newer than the last change")
    reached = abs(stats.actual_kib - history.target_kib) <= TOLERANCE_KIB
    if not reached and now - history.changed_at < SETTLE_S:
        return history, (WAIT, "moving", f"balloon moving toward {mib(history.target_kib)} MiB")
    if not reached and abs(stats.actual_kib - history.from_kib) <= TOLERANCE_KIB:
        stuck = replace(history.settled(), unresponsive=True)
        return stuck, (SKIP, "unresponsive", f"setmem to {mib(history.target_kib)} MiB had no effect after {SETTLE_S:g}s: leaving it alone")
    return history.settled(), None


def decide(obs: Observation, settings: DomainSettings, history: History, now: float,
           limits: Limits = Limits(), policy: str = "step") -> Decision:
    stats = obs.stats
    signals = Signals()
    blocked = _eligibility(obs, settings, history, now, limits)
    if blocked is None:
        signals = _signals(stats, settings, history)
        if history.seen_update is None or stats.last_update > history.seen_update:
            history = history.saw(stats)
            if signals.paging:
                history = replace(history, paged_at=stats.last_update)
        history, blocked = _settle(stats, history, now)
    if blocked is not None:
        action, code, reason = blocked
        return Decision(obs.name, action, code, reason, stats.actual_kib, None, history)
    action, target, code, reason = POLICIES[policy](stats, settings, cap_kib(stats, settings), signals)
    return bounded(Decision(obs.name, action, code, reason, stats.actual_kib, target, history), stats, settings)


def bounded(decision: Decision, stats: BalloonStats, settings: DomainSettings) -> Decision:
    """Defence in depth, after every policy and the host fit: a grow ends above the current size
    and at most at the cap; a shrink ends below it and at least at the floor; neither above the cap.
    Anything else is refused, whatever the figures or the policy said."""
    if not decision.changes:
        return decision
    actual, target, cap = stats.actual_kib, decision.target_kib, cap_kib(stats, settings)
    if (isinstance(actual, int) and isinstance(target, int) and isinstance(cap, int) and actual > 0 and target <= cap
            and (actual < target if decision.action == GROW else settings.critical_kib <= target < actual)):
        return decision
    return replace(decision, action=HOLD, target_kib=None, code="refused",
                   reason=f"refused {decision.action} to {target} KiB: outside the bounds (size {actual} KiB, "
                          f"floor {settings.critical_kib} KiB, cap {cap} KiB)")


def decide_all(observations: Sequence[Observation], settings: Mapping[str, DomainSettings],
               histories: Mapping[str, History], host: Optional[HostMemory], now: float,
               limits: Limits = Limits(), policy: str = "target") -> List[Decision]:
    """Every domain's decision, then (target policy) fitted to what the host can give."""
    decisions = [decide(obs, settings[obs.name], histories.get(obs.name, History()), now, limits, policy)
                 for obs in observations]
    if host is None or policy == "step":  # the original's rule knows nothing of the host
        return decisions
    fitted = fit_host(decisions, {o.name: o for o in observations}, settings, host)
    return [bounded(d, obs.stats, settings[obs.name]) for d, obs in zip(fitted, observations)]


def fit_host(decisions: List[Decision], observations: Mapping[str, Observation],
             settings: Mapping[str, DomainSettings], host: HostMemory) -> List[Decision]:
    """Growth only from what the host can spare above its reserve (the neediest first);
    below the reserve, reclaim from the largest surplus first, then by shares, never
    below a floor."""
    out = list(decisions)
    # PSI says tasks already stall: the host is short whatever MemAvailable says.
    spare = min(host.spare_kib, 0) if host.pressure else host.spare_kib
    grows = sorted((i for i, d in enumerate(out) if d.action == GROW),
                   key=lambda i: usable_pct(observations[out[i].name].stats))
    for i in grows:
        d = out[i]
        give = min(d.target_kib - d.actual_kib, max(spare, 0))
        if give < TOLERANCE_KIB:
            out[i] = replace(d, action=HOLD, target_kib=None, code="host-reserve",
                             reason=f"{d.reason}, but the host is at its reserve ({mib(host.available_kib)} MiB "
                                    f"available, {mib(host.reserve_kib)} MiB kept)")
            continue
        if give < d.target_kib - d.actual_kib:
            out[i] = replace(d, target_kib=d.actual_kib + give, code="host-limited",
                             reason=f"{d.reason} (limited by the host's reserve)")
        spare -= give
    deficit = max(-spare, host.total_kib // 100 if host.pressure else 0)
    if deficit > 0:
        out = _reclaim(out, observations, settings, host, deficit)
    return out


def _reclaim(decisions: List[Decision], observations: Mapping[str, Observation],
             settings: Mapping[str, DomainSettings], host: HostMemory, deficit: int) -> List[Decision]:
    # Only domains with fresh, settled figures; a grow planned this cycle is undone first.
    plan: Dict[int, int] = {}
    for i, d in enumerate(decisions):
        if d.action in (HOLD, SHRINK, GROW) and d.actual_kib:
            plan[i] = d.target_kib if d.action == SHRINK else d.actual_kib
    def floor(i: int) -> int:
        return settings[decisions[i].name].critical_kib

    def surplus(i: int) -> int:
        obs = observations[decisions[i].name]
        return plan[i] - max(target_size_kib(obs.stats, settings[obs.name]), floor(i))

    for i in sorted(plan, key=surplus, reverse=True):
        take = min(max(surplus(i), 0), deficit)
        plan[i] -= take
        deficit -= take
    if deficit > 0:
        weights = {i: max(plan[i] - floor(i), 0) / settings[decisions[i].name].shares for i in plan}
        total = sum(weights.values())
        for i, weight in weights.items():
            if total > 0:
                plan[i] -= min(plan[i] - floor(i), math.ceil(deficit * weight / total)) if weight else 0
    out = list(decisions)
    why = (f"host below its reserve ({mib(host.available_kib)} MiB available, {mib(host.reserve_kib)} MiB kept)"
           if host.spare_kib < 0 else "host memory pressure (PSI)")
    for i, size in plan.items():
        d = out[i]
        if d.actual_kib - size >= TOLERANCE_KIB and size >= floor(i):
            out[i] = replace(d, action=SHRINK, target_kib=size, code="host-reserve", reason=why)
        elif d.action == GROW:
            out[i] = replace(d, action=HOLD, target_kib=None, code="host-reserve", reason=f"{d.reason}, but {why}")
    return out
