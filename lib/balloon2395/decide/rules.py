"""This daemon's own rules for one domain: step (the original's fixed steps) and target (a size that puts
usable in the middle of the band)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Dict

from ..settings import DomainSettings
from ..units import mib
from .figures import Figures, usable_pct
from .history import Signals
from .records import GROW, HOLD, SHRINK, Candidate, HostView, Policy, Proposal
from .tuning import TUNING


def step(figures: Figures, settings: DomainSettings, cap_kib: int, signals: Signals) -> Proposal:
    """The original's rule with its unit defect fixed: fixed steps across a band."""
    actual, pct = figures.actual_kib, usable_pct(figures)
    if pct < settings.minimal:
        target = min(actual + settings.addram_kib, cap_kib)
        if target <= actual:
            return Proposal(HOLD, None, "at-maximum",
                            f"usable {pct}% < {settings.minimal:g}% but at maximum {mib(cap_kib)} MiB")
        return Proposal(GROW, target, "below-band", f"usable {pct}% < {settings.minimal:g}%")
    if pct > settings.maximal:
        target = actual - settings.rmram_kib
        if target < settings.floor_kib:
            return Proposal(HOLD, None, "at-floor", (f"usable {pct}% > {settings.maximal:g}% "
                                                     f"but floor is {mib(settings.floor_kib)} MiB"))
        return Proposal(SHRINK, target, "above-band", f"usable {pct}% > {settings.maximal:g}%")
    return Proposal(HOLD, None, "in-band", f"usable {pct}% within {settings.minimal:g}-{settings.maximal:g}%")


def target_size_kib(figures: Figures, settings: DomainSettings, signals: Signals = Signals()) -> int:
    """The size that puts usable in the middle of the band, with at least the headroom
    (raised to the guest's recent bursts) usable and room for what it has swapped out."""
    return _sized_kib(figures, settings, signals, (settings.minimal + settings.maximal) / 200.0)


def lowest_in_band_kib(figures: Figures, settings: DomainSettings, signals: Signals = Signals()) -> int:
    """The least size the band would not grow: usable at its minimal share, with the headroom as above."""
    return _sized_kib(figures, settings, signals, settings.minimal / 100.0)


def _sized_kib(figures: Figures, settings: DomainSettings, signals: Signals, usable_share: float) -> int:
    used = figures.actual_kib - figures.usable_kib + (signals.swapped_kib if signals.paging else 0)
    headroom = max(settings.headroom_kib, signals.burst_kib)
    size = max(math.ceil(used / (1.0 - usable_share)), used + headroom + TUNING.grow_pad_kib, settings.floor_kib)
    return -(-size // 1024) * 1024  # whole MiB: what logs show is what the guest gets


def target(figures: Figures, settings: DomainSettings, cap_kib: int, signals: Signals) -> Proposal:
    """Grow to the target in one move; shrink toward it at most `max_shrink` at a time."""
    actual, usable, pct = figures.actual_kib, figures.usable_kib, usable_pct(figures)
    want = min(target_size_kib(figures, settings, signals), cap_kib)
    if signals.paging:
        want = max(want, min(actual + settings.addram_kib, cap_kib))
    headroom = max(settings.headroom_kib, signals.burst_kib)
    if pct < settings.minimal or usable < headroom or signals.paging:
        why = ("swapping in or major faults rising" if signals.paging else
               f"usable {pct}% < {settings.minimal:g}%" if pct < settings.minimal else
               f"usable {mib(usable)} MiB < headroom {mib(headroom)} MiB")
        if want <= actual:
            return Proposal(HOLD, None, "at-maximum", f"{why} but at maximum {mib(cap_kib)} MiB")
        code = "paging" if signals.paging else "below-band" if pct < settings.minimal else "headroom"
        return Proposal(GROW, want, code, why)
    if pct > settings.maximal and signals.paged_lately:
        return Proposal(HOLD, None, "paged-lately",
                        f"usable {pct}% > {settings.maximal:g}% but it paged within {TUNING.paged_hold_s}s")
    # Shrunk, a guest that cannot page meets its first burst beyond the headroom with an OOM kill that doing
    # nothing avoids: it is kept whole until it has gone `burst_wait` without one.
    if pct > settings.maximal and not signals.can_page and signals.quiet_s < settings.burst_wait_s:
        return Proposal(HOLD, None, "kept-whole",
                        (f"usable {pct}% > {settings.maximal:g}% but it cannot page (no swap seen, no autodeflate) "
                         f"and has not gone {settings.burst_wait_s:g}s without a burst"))
    if pct > settings.maximal and actual - want >= TUNING.deadband_kib:
        goal = max(want, actual - settings.max_shrink_kib)
        return Proposal(SHRINK, goal, "above-band", f"usable {pct}% > {settings.maximal:g}%: toward {mib(want)} MiB")
    if pct > settings.maximal:
        return Proposal(HOLD, None, "at-floor",
                        (f"usable {pct}% > {settings.maximal:g}% but at its target "
                         f"(floor {mib(settings.floor_kib)} MiB, headroom {mib(headroom)} MiB)"))
    return Proposal(HOLD, None, "in-band", f"usable {pct}% within {settings.minimal:g}-{settings.maximal:g}%")


def each(rule: Callable[[Figures, DomainSettings, int, Signals], Proposal]) -> Policy:
    """A whole-host policy from a rule that looks at one domain at a time."""
    def policy(view: HostView) -> Dict[str, Proposal]:
        return {c.name: rule(c.figures, c.settings, c.cap_kib, c.signals) for c in view.candidates}
    return policy


def paging_view(c: Candidate) -> Signals:
    """What the rules read of a candidate's signals: with autodeflate, out of memory its balloon gives the
    memory back, so it keeps no headroom for bursts and counts as a guest that can page."""
    return replace(c.signals, burst_kib=0, can_page=True) if c.facts.autodeflate else c.signals
