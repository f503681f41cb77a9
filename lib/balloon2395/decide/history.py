"""What the daemon remembers of a domain between cycles, and the signals its recent reports give."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from ..settings import DomainSettings
from ..units import PAGE_KIB
from .figures import Figures, usable_pct
from .tuning import TUNING


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
    # what a guest that ran out of memory between two reports (an OOM kill, as far as the host can see)
    # wanted at least, decaying slowly: the burst it could not show recurs
    ran_out_kib: float = 0.0
    seen_minor_fault: Optional[int] = None
    seen_usable_kib: Optional[int] = None
    paged_at: Optional[int] = None  # report time of the last sign of paging
    # (actual, MemFree) of the last TUNING.recent_reports reports a cycle saw, oldest first: for rules that
    # average over recent samples (MoM's StatAvg)
    recent: Tuple[Tuple[int, int], ...] = ()
    # report time of the report the pending change was decided on: a stamp from the future that never
    # moves is later than the change's wall time, but no newer than that report
    changed_on: Optional[int] = None
    first_seen: Optional[int] = None  # report time of the first fresh report
    burst_at: Optional[int] = None  # report time of the last burst (a rise of TUNING.burst_rise_kib, or running out)
    # its size at the first fresh report: what doing nothing would have left it, as far as the daemon knows
    found_kib: Optional[int] = None
    # its largest size in a report: a guest grown for a burst meets the next one at that size, where shrunk
    # back it would swap or kill while the host does not need the memory (idle_shrink: needed)
    peak_kib: Optional[int] = None

    def after_change(self, now: float, from_kib: int, target_kib: int) -> History:
        """The change made now, on the report last seen: only a report newer than both confirms it."""
        return replace(self, changed_at=now, from_kib=from_kib, target_kib=target_kib, changed_on=self.seen_update)

    def settled(self) -> History:
        return replace(self, changed_at=None, from_kib=None, target_kib=None, changed_on=None)

    def pending(self) -> Optional[Tuple[float, int, int]]:
        """The setmem not yet confirmed by fresh stats: (wall time, from KiB, target KiB), or None.
        after_change sets the three together."""
        if self.changed_at is None or self.from_kib is None or self.target_kib is None:
            return None
        return self.changed_at, self.from_kib, self.target_kib

    def saw(self, figures: Figures) -> History:
        used = figures.actual_kib - figures.usable_kib
        burst, ran_out, burst_at = self.burst_kib, self.ran_out_kib, self.burst_at
        if self.seen_update is not None and self.seen_used_kib is not None:
            elapsed = figures.last_update - self.seen_update
            rise, lacked = used - self.seen_used_kib, self._ran_out_kib(figures, used)
            burst = max(burst * TUNING.burst_decay_per_s ** elapsed, rise)
            ran_out = max(ran_out * TUNING.ran_out_decay_per_s ** elapsed, lacked)
            if rise >= TUNING.burst_rise_kib or lacked:
                burst_at = figures.last_update
        recent = tuple(self.recent)
        if figures.unused_kib is not None:
            recent = (recent + ((figures.actual_kib, figures.unused_kib),))[-TUNING.recent_reports:]
        return replace(self, seen_update=figures.last_update, seen_swap_in_kib=figures.swap_in_kib,
                       seen_major_fault=figures.major_fault, seen_used_kib=used, burst_kib=burst, recent=recent,
                       ran_out_kib=ran_out, seen_minor_fault=figures.minor_fault, seen_usable_kib=figures.usable_kib,
                       first_seen=figures.last_update if self.first_seen is None else self.first_seen,
                       burst_at=burst_at, found_kib=figures.actual_kib if self.found_kib is None else self.found_kib,
                       peak_kib=max(figures.actual_kib, self.peak_kib or 0))

    def _ran_out_kib(self, figures: Figures, used_kib: int) -> int:
        """Twice what the guest touched since the last report, when that was (nearly) all it had usable
        and it does not use it now: a workload that allocated until the OOM killer took it wanted more
        than it could touch. 0 otherwise."""
        if figures.minor_fault is None or self.seen_minor_fault is None or self.seen_usable_kib is None:
            return 0
        touched = (figures.minor_fault - self.seen_minor_fault) * PAGE_KIB
        gone = used_kib - (self.seen_used_kib or 0) < touched // 2
        all_it_had = touched * 4 >= self.seen_usable_kib * 3  # the reserves and floors stay untouched
        return 2 * touched if self.seen_usable_kib >= TUNING.ran_out_min_kib and all_it_had and gone else 0


@dataclass(frozen=True)
class Signals:
    """What a guest's recent reports say beyond its current figures."""

    paging: bool = False  # swap-in or major faults rising since the last report
    swapped_kib: int = 0  # an estimate of what it has out in swap (swap_out - swap_in)
    burst_kib: int = 0  # how fast its used memory has jumped lately, between two reports
    paged_lately: bool = False  # paging seen within TUNING.paged_hold_s: shrinking again would bring it back
    # it has swap in use or has swapped out (or autodeflate): denied memory, it pages instead of OOM-killing
    can_page: bool = True
    quiet_s: float = math.inf  # since its first report or its last burst, whichever came later


def recent_signals(figures: Figures, settings: DomainSettings, history: History) -> Signals:
    """Swap-in or major faults at a paging rate since the last fresh report; swap in use; bursts."""
    swapped = max((figures.swap_out_kib or 0) - (figures.swap_in_kib or 0), 0)
    burst = int(max(history.burst_kib, history.ran_out_kib))
    lately = history.paged_at is not None and figures.last_update - history.paged_at < TUNING.paged_hold_s
    # swap in use, or ever swapped out: a guest without swap reports 0 for both forever
    can_page = swapped > 0 or bool(figures.swap_out_kib)
    rising = (history.seen_used_kib is not None
              and figures.actual_kib - figures.usable_kib - history.seen_used_kib >= TUNING.burst_rise_kib)
    stamps = (history.first_seen, history.burst_at, figures.last_update if rising else None)
    since = max((t for t in stamps if t is not None), default=figures.last_update)
    quiet = float(figures.last_update - since)
    if history.seen_update is None or figures.last_update <= history.seen_update:
        return Signals(False, swapped, burst, lately, can_page, quiet)
    elapsed = figures.last_update - history.seen_update
    paging = (figures.swap_in_kib is not None and history.seen_swap_in_kib is not None
              and (figures.swap_in_kib - history.seen_swap_in_kib) / elapsed > TUNING.swap_in_kib_per_s)
    if not paging and figures.major_fault is not None and history.seen_major_fault is not None:
        rate = (figures.major_fault - history.seen_major_fault) / elapsed
        paging = rate > TUNING.major_faults_per_s and usable_pct(figures) <= settings.maximal
    return Signals(paging, swapped, burst, lately or paging, can_page, quiet)


def remembered(figures: Figures, signals: Signals, history: History) -> History:
    """The history with a report newer than the last one it saw."""
    if history.seen_update is not None and figures.last_update <= history.seen_update:
        return history
    history = history.saw(figures)
    return replace(history, paged_at=figures.last_update) if signals.paging else history
