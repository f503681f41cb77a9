"""Deciding: a pure function from one domain's observation, its settings and
what the daemon remembers of it, to one decision. No I/O, no clock reads.

The safety rules (exclusions, freshness, waiting for the last change to land)
come first and are shared by every policy; a policy only proposes a target.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

from .config import DomainSettings
from .domain_xml import DomainFacts
from .units import mib
from .virsh_output import BalloonStats

GROW, SHRINK, HOLD, WAIT, SKIP = "grow", "shrink", "hold", "wait", "skip"
CHANGES = (GROW, SHRINK)

FUTURE_TOLERANCE_S = 2.0  # host clock jitter between virsh's stamp and ours
SETTLE_S = 5.0  # a balloon that has not moved at all by then never will
TOLERANCE_KIB = 1024  # 'reached the target': QEMU rounds to pages, guests lag a little


@dataclass(frozen=True)
class Observation:
    stats: BalloonStats
    facts: Optional[DomainFacts] = None  # None: dumpxml could not be read yet
    stats_since: Optional[float] = None  # when the daemon switched the stats period on

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

    def after_change(self, now: float, from_kib: int, target_kib: int) -> "History":
        return replace(self, changed_at=now, from_kib=from_kib, target_kib=target_kib)


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
    """Timing limits that come from the config, not from one domain."""

    stale_after_s: float = 5.0


# A policy gets fresh, sane figures and returns (action, target KiB, code, reason).
Proposal = Tuple[str, Optional[int], str, str]
Block = Tuple[str, str, str]  # (action, code, reason)


def usable_pct(stats: BalloonStats) -> int:
    """Integer percent, as the original's shell arithmetic computed it."""
    return stats.usable_kib * 100 // stats.actual_kib


def step(stats: BalloonStats, settings: DomainSettings, cap_kib: int) -> Proposal:
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


POLICIES: Dict[str, Callable[[BalloonStats, DomainSettings, int], Proposal]] = {"step": step}


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
    if cap_kib(stats, settings) is None:
        return SKIP, "no-maximum", "domain maximum unknown"
    if stats.usable_kib is None or stats.last_update is None:
        return SKIP, "no-usable", "guest reports no usable memory (stats period off, or no balloon driver)"
    if facts.stats_period_s is None:
        return SKIP, "no-period", "no stats period: the figures are frozen at boot"
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
        stuck = History(unresponsive=True)
        return stuck, (SKIP, "unresponsive", f"setmem to {mib(history.target_kib)} MiB had no effect after {SETTLE_S:g}s: leaving it alone")
    return History(), None


def decide(obs: Observation, settings: DomainSettings, history: History, now: float,
           limits: Limits = Limits(), policy: str = "step") -> Decision:
    stats = obs.stats
    blocked = _eligibility(obs, settings, history, now, limits)
    if blocked is None:
        history, blocked = _settle(stats, history, now)
    if blocked is not None:
        action, code, reason = blocked
        return Decision(obs.name, action, code, reason, stats.actual_kib, None, history)
    cap = cap_kib(stats, settings)
    action, target, code, reason = POLICIES[policy](stats, settings, cap)
    # Defence in depth: whatever a policy proposes, these bounds hold.
    if action == GROW and not stats.actual_kib < target <= cap:
        action, target, code, reason = HOLD, None, "refused", f"refused grow to {target} KiB: outside ({stats.actual_kib}, {cap}]"
    if action == SHRINK and not settings.critical_kib <= target < stats.actual_kib:
        action, target, code, reason = HOLD, None, "refused", f"refused shrink to {target} KiB: below floor or not a shrink"
    return Decision(obs.name, action, code, reason, stats.actual_kib, target, history)
