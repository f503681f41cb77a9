"""The safety checks every domain passes before any policy sees it, and `bounded()`, which checks every
proposal last."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Tuple, Union

from ..observation import Observation
from ..settings import DomainSettings
from ..units import mib
from ..virsh.domain_xml import DomainFacts
from ..virsh.output import BalloonStats
from .figures import Figures
from .history import History, recent_signals, remembered
from .records import GROW, HOLD, SKIP, WAIT, Block, Candidate, Decision, Limits
from .tuning import TUNING


def cap_kib(stats: BalloonStats, settings: DomainSettings) -> Optional[int]:
    """The most a domain may have: its own maximum, lowered by a configured one."""
    return None if stats.maximum_kib is None else capped(stats.maximum_kib, settings)


def capped(maximum_kib: int, settings: DomainSettings) -> int:
    return maximum_kib if settings.maximum_kib is None else min(maximum_kib, settings.maximum_kib)


# ------------------------------------------------------------------ eligibility
#
# The checks run in this order and the first that fails is the reason given (its code is what logs,
# metrics and tests key on): the domain, the guest, its figures, its reports.

def _eligibility(obs: Observation, settings: DomainSettings, history: History, now: float,
                 limits: Limits) -> Union[Block, Figures]:
    """Why this domain must not be acted on now, or its figures when it may be."""
    facts = _known_domain(obs, settings)
    if not isinstance(facts, DomainFacts):
        return facts
    blocked = _guest(facts, settings, history)
    if blocked is not None:
        return blocked
    figures = _figures(obs.stats, settings)
    if not isinstance(figures, Figures):
        return figures
    return _reports(obs, facts, figures, history, now, limits) or figures


def _known_domain(obs: Observation, settings: DomainSettings) -> Union[Block, DomainFacts]:
    """The config lets the daemon act on it, the read names it by one uuid, and its XML was read."""
    if settings.exclude:
        return SKIP, "excluded", "excluded by config"
    if settings.invalid:
        return SKIP, "bad-metadata", f"its settings metadata is not usable: {settings.invalid}"
    if obs.problem:
        return SKIP, "inconsistent-read", f"inconsistent read: {obs.problem}"
    if obs.uuid is None:
        return WAIT, "no-uuid", "not in the read's list of running domains (started during the read?)"
    if obs.facts is None:
        return WAIT, "no-xml", "domain XML not read yet"
    return obs.facts


def _guest(facts: DomainFacts, settings: DomainSettings, history: History) -> Optional[Block]:
    """A guest the daemon may balloon, whose balloon answered before, through a virtio device."""
    if facts.windows and not settings.manage_windows:
        return SKIP, "windows", f"Windows guest ({facts.windows})"
    if history.unresponsive:
        return SKIP, "unresponsive", "an earlier setmem never took effect (no balloon driver in the guest?)"
    if facts.balloon_model != "virtio":
        return SKIP, "no-balloon", f"no virtio balloon device (model {facts.balloon_model or 'absent'})"
    return None


def _figures(stats: BalloonStats, settings: DomainSettings) -> Union[Block, Figures]:
    """Sizes that are there and agree with each other and with the configured maximum, and a usable
    figure the guest reported."""
    actual, maximum = stats.actual_kib, stats.maximum_kib
    if not actual:
        return SKIP, "no-size", "no balloon size reported"
    if not maximum:
        return SKIP, "no-maximum", f"domain maximum {'0' if maximum == 0 else 'unknown'}"
    if actual > maximum:
        return SKIP, "inconsistent", f"inconsistent stats: actual {mib(actual)} MiB > maximum {mib(maximum)} MiB"
    if settings.maximum_kib is not None and actual > settings.maximum_kib:
        return SKIP, "above-cap", (f"actual {mib(actual)} MiB is above the configured maximum "
                                   f"{mib(settings.maximum_kib)} MiB: left to the operator")
    if stats.usable_kib is None or stats.last_update is None:
        return SKIP, "no-usable", ("guest reports no usable memory (stats period off, or no balloon driver); "
                                   "the daemon sets a stats period, a dry run or a view never does")
    return Figures(actual, stats.usable_kib, maximum, stats.last_update,
                   stats.swap_in_kib, stats.swap_out_kib, stats.major_fault, stats.unused_kib, stats.minor_fault)


def _reports(obs: Observation, facts: DomainFacts, figures: Figures, history: History, now: float,
             limits: Limits) -> Optional[Block]:
    """Reports that follow the guest: a stats period runs, a report came since it was set, neither
    from the future nor stale, and its usable fits in the balloon."""
    if facts.stats_period_s is None:
        return SKIP, "no-period", ("no stats period: the figures are frozen at boot; "
                                   "the daemon sets one, a dry run or a view never does")
    if obs.stats_since is not None and figures.last_update <= obs.stats_since:
        return WAIT, "stats-starting", "waiting for the first report since the stats period was set"
    if figures.last_update > now + TUNING.future_tolerance_s:
        return SKIP, "future-stats", f"stats stamped {figures.last_update - now:.0f}s in the future"
    age = now - figures.last_update
    if age > limits.stale_after_s:
        return SKIP, "stale-stats", f"stats stale: last update {age:.0f}s ago"
    if figures.usable_kib > figures.actual_kib:
        # a report older than the last change compares usable with the size the guest had then
        why = f"inconsistent stats: usable {mib(figures.usable_kib)} MiB > actual {mib(figures.actual_kib)} MiB"
        return _awaiting(figures, history) or (SKIP, "inconsistent", why)
    return None


def _awaiting(figures: Figures, history: History) -> Optional[Block]:
    """The last change is not confirmed yet: the report is not newer than it."""
    pending = history.pending()
    if pending is None:
        return None
    decided_on = history.changed_on if history.changed_on is not None else -math.inf
    if figures.last_update <= pending[0] or figures.last_update <= decided_on:
        return WAIT, "pending", "waiting for stats newer than the last change"
    return None


def _settle(figures: Figures, history: History, now: float) -> Tuple[History, Optional[Block]]:
    """Follow the last change until fresh stats confirm it; flag a balloon that never moves."""
    pending = history.pending()
    if pending is None:
        return history, None
    changed_at, from_kib, target_kib = pending
    awaiting = _awaiting(figures, history)
    if awaiting is not None:
        return history, awaiting
    reached = abs(figures.actual_kib - target_kib) <= TUNING.tolerance_kib
    if not reached and now - changed_at < TUNING.settle_s:
        return history, (WAIT, "moving", f"balloon moving toward {mib(target_kib)} MiB")
    if not reached and abs(figures.actual_kib - from_kib) <= TUNING.tolerance_kib:
        stuck = replace(history.settled(), unresponsive=True)
        return stuck, (SKIP, "unresponsive",
                       f"setmem to {mib(target_kib)} MiB had no effect after {TUNING.settle_s:g}s: leaving it alone")
    return history.settled(), None


def candidate(obs: Observation, settings: DomainSettings, history: History, now: float,
               limits: Limits) -> Union[Decision, Candidate]:
    """The domain as a policy may see it, or the decision that blocks it before any policy."""
    eligible = _eligibility(obs, settings, history, now, limits)
    if not isinstance(eligible, Figures):
        return _blocked(obs, eligible, history)
    figures = eligible
    signals = recent_signals(figures, settings, history)
    history, blocked = _settle(figures, remembered(figures, signals, history), now)
    if blocked is not None:
        return _blocked(obs, blocked, history)
    assert obs.facts is not None  # _eligibility let it through: its XML was read
    return Candidate(obs.name, figures, settings, capped(figures.maximum_kib, settings), signals, obs.facts, history)


def _blocked(obs: Observation, block: Block, history: History) -> Decision:
    action, code, reason = block
    return Decision(obs.name, action, code, reason, obs.stats.actual_kib, None, history)


def bounded(decision: Decision, stats: BalloonStats, settings: DomainSettings) -> Decision:
    """Defence in depth, after every policy and the host fit: a grow ends above the current size
    and at most at the cap; a shrink ends below it and at least at the floor; neither above the cap.
    Anything else is refused, whatever the figures or the policy said."""
    if not decision.changes:
        return decision
    actual, target, cap = stats.actual_kib, decision.target_kib, cap_kib(stats, settings)
    if (isinstance(actual, int) and isinstance(target, int) and isinstance(cap, int) and actual > 0 and target <= cap
            and (actual < target if decision.action == GROW else settings.floor_kib <= target < actual)):
        return decision
    return replace(decision, action=HOLD, target_kib=None, code="refused",
                   reason=f"refused {decision.action} to {target} KiB: outside the bounds (size {actual} KiB, "
                          f"floor {settings.floor_kib} KiB, cap {cap} KiB)")
