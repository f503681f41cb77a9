"""Deciding, pure: no I/O, no clock reads. The safety rules every domain must pass before any policy
sees it (exclusions, freshness, waiting for the last change to land), what a policy sees and
proposes, this daemon's own rules (step, and target with its fit to the host), and `bounded()`,
which checks every proposal last. decide.py runs them over a cycle; peers.py holds the peers' rules.

A policy sees the whole host: every domain that passed the safety rules (a Candidate), the host's
memory and the time, and proposes a target for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

from .config import DomainSettings
from .domain_xml import DomainFacts
from .host import HostMemory
from .observe import Observation
from .units import PAGE_KIB, mib
from .virsh_output import BalloonStats

GROW, SHRINK, HOLD, WAIT, SKIP = "grow", "shrink", "hold", "wait", "skip"
CHANGES = (GROW, SHRINK)
URGENT = ("paging", "below-band")  # grows that avert swapping or an OOM kill, not only keep headroom

FUTURE_TOLERANCE_S = 2.0  # host clock jitter between virsh's stamp and ours
SETTLE_S = 5.0  # a balloon that has not moved at all by then never will
TOLERANCE_KIB = 1024  # 'reached the target': QEMU rounds to pages, guests lag a little
DEADBAND_KIB = 32 * 1024  # target policy: smaller moves are churn, not control
# Major faults also come from reading files; only a rate like this, with usable not
# plentiful, says the guest is paging its working set back in.
MAJOR_FAULTS_PER_S = 100
# A guest whose idle daemons wake up swaps a few of their pages back in (up to 500 KiB/s seen on Debian 12
# guests with swappiness 60); one short of memory swaps in MiBs a second.
SWAP_IN_KIB_PER_S = 1024
GROW_PAD_KIB = 64 * 1024  # a grow leaves this above the headroom, so the next 1 MiB is no new grow
BURST_DECAY_PER_S = 0.999  # a burst is remembered for tens of minutes (half-life ~12 min)
PAGED_HOLD_S = 600  # after the guest paged its working set back in, no shrink for this long
# A guest paging or below its band may grow into this share of the host's reserve: an OOM kill in the
# guest is sure, a host short of its reserve only may be (on a host that can swap; one that cannot keeps
# all of its reserve, since out of RAM it kills a whole QEMU).
URGENT_RESERVE_SHARE = 0.5
# A host that cannot swap with less available than this share of its reserve is about to kill a whole QEMU:
# the guests give back even what they use (an OOM kill inside one guest instead of a guest lost).
OOM_NEAR_RESERVE_SHARE = 0.5
RAN_OUT_DECAY_PER_S = 0.9999  # half-life ~2 h: an OOM kill is dearer than a burst kept in headroom
RAN_OUT_MIN_KIB = 64 * 1024  # with less usable, ordinary page faults could look like running out
RECENT_REPORTS = 10  # History.recent and HostView.host_recent: vdsm's mom.conf keeps 10 samples for StatAvg
# A rise of used this large between two reports is a burst: what a guest that cannot page must be kept whole for.
BURST_RISE_KIB = 128 * 1024


@dataclass(frozen=True)
class Figures:
    """A domain's figures once the eligibility checks passed: all there, consistent and fresh. What
    the policies work on (sizes in KiB, last_update in epoch seconds)."""

    actual_kib: int
    usable_kib: int
    maximum_kib: int
    last_update: int
    swap_in_kib: Optional[int] = None
    swap_out_kib: Optional[int] = None
    major_fault: Optional[int] = None
    unused_kib: Optional[int] = None  # MemFree: what the peers' rules read as the guest's free memory
    minor_fault: Optional[int] = None


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
    # (actual, MemFree) of the last RECENT_REPORTS reports a cycle saw, oldest first: for rules that
    # average over recent samples (MoM's StatAvg)
    recent: Tuple[Tuple[int, int], ...] = ()
    # report time of the report the pending change was decided on: a stamp from the future that never
    # moves is later than the change's wall time, but no newer than that report
    changed_on: Optional[int] = None
    first_seen: Optional[int] = None  # report time of the first fresh report
    burst_at: Optional[int] = None  # report time of the last burst (a rise of BURST_RISE_KIB, or running out)

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
            burst = max(burst * BURST_DECAY_PER_S ** elapsed, rise)
            ran_out = max(ran_out * RAN_OUT_DECAY_PER_S ** elapsed, lacked)
            if rise >= BURST_RISE_KIB or lacked:
                burst_at = figures.last_update
        recent = tuple(self.recent)
        if figures.unused_kib is not None:
            recent = (recent + ((figures.actual_kib, figures.unused_kib),))[-RECENT_REPORTS:]
        return replace(self, seen_update=figures.last_update, seen_swap_in_kib=figures.swap_in_kib,
                       seen_major_fault=figures.major_fault, seen_used_kib=used, burst_kib=burst, recent=recent,
                       ran_out_kib=ran_out, seen_minor_fault=figures.minor_fault, seen_usable_kib=figures.usable_kib,
                       first_seen=figures.last_update if self.first_seen is None else self.first_seen,
                       burst_at=burst_at)

    def _ran_out_kib(self, figures: Figures, used_kib: int) -> int:
        """Twice what the guest touched since the last report, when that was (nearly) all it had usable
        and it does not use it now: a workload that allocated until the OOM killer took it wanted more
        than it could touch. 0 otherwise."""
        if figures.minor_fault is None or self.seen_minor_fault is None or self.seen_usable_kib is None:
            return 0
        touched = (figures.minor_fault - self.seen_minor_fault) * PAGE_KIB
        gone = used_kib - (self.seen_used_kib or 0) < touched // 2
        all_it_had = touched * 4 >= self.seen_usable_kib * 3  # the reserves and floors stay untouched
        return 2 * touched if self.seen_usable_kib >= RAN_OUT_MIN_KIB and all_it_had and gone else 0


@dataclass(frozen=True)
class Signals:
    """What a guest's recent reports say beyond its current figures."""

    paging: bool = False  # swap-in or major faults rising since the last report
    swapped_kib: int = 0  # an estimate of what it has out in swap (swap_out - swap_in)
    burst_kib: int = 0  # how fast its used memory has jumped lately, between two reports
    paged_lately: bool = False  # paging seen within PAGED_HOLD_S: shrinking again would bring it back
    # it has swap in use or has swapped out (or autodeflate): denied memory, it pages instead of OOM-killing
    can_page: bool = True
    quiet_s: float = math.inf  # since its first report or its last burst, whichever came later


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


class Proposal(NamedTuple):
    """What a policy proposes for one domain."""

    action: str
    target_kib: Optional[int]
    code: str
    reason: str


Block = Tuple[str, str, str]  # (action, code, reason)


@dataclass(frozen=True)
class Candidate:
    """A domain every safety check let through this cycle, as a policy sees it."""

    name: str
    figures: Figures
    settings: DomainSettings
    cap_kib: int  # its maximum, lowered by a configured one
    signals: Signals
    facts: DomainFacts
    history: History


@dataclass(frozen=True)
class HostView:
    """Everything a policy may decide on: the candidates, the host's memory (None: not watched) and
    the time of the read."""

    candidates: Tuple[Candidate, ...]
    host: Optional[HostMemory]
    now: float
    # what the running domains were given and have not touched yet (size less QEMU RSS, summed): theirs to
    # take without a setmem, so the host cannot give it again
    untouched_kib: int = 0
    # the host's available memory at the last reads, oldest first, this one's last: for rules that average
    # the host over recent samples (MoM's Host.StatAvg)
    host_recent: Tuple[int, ...] = ()
    # what the shrinks under way will still give back (each such domain's size less its shrink's target)
    shrinking_kib: int = 0


# A policy proposes for any of the candidates; one it leaves out is held.
Policy = Callable[[HostView], Dict[str, Proposal]]


def usable_pct(figures: Figures) -> int:
    """Integer percent, as the original's shell arithmetic computed it."""
    return figures.usable_kib * 100 // figures.actual_kib


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
        if target < settings.critical_kib:
            return Proposal(HOLD, None, "at-floor", (f"usable {pct}% > {settings.maximal:g}% "
                                                     f"but floor is {mib(settings.critical_kib)} MiB"))
        return Proposal(SHRINK, target, "above-band", f"usable {pct}% > {settings.maximal:g}%")
    return Proposal(HOLD, None, "in-band", f"usable {pct}% within {settings.minimal:g}-{settings.maximal:g}%")


def target_size_kib(figures: Figures, settings: DomainSettings, signals: Signals = Signals()) -> int:
    """The size that puts usable in the middle of the band, with at least the headroom
    (raised to the guest's recent bursts) usable and room for what it has swapped out."""
    used = figures.actual_kib - figures.usable_kib + (signals.swapped_kib if signals.paging else 0)
    middle = (settings.minimal + settings.maximal) / 200.0
    headroom = max(settings.headroom_kib, signals.burst_kib)
    size = max(math.ceil(used / (1.0 - middle)), used + headroom + GROW_PAD_KIB, settings.critical_kib)
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
                        f"usable {pct}% > {settings.maximal:g}% but it paged within {PAGED_HOLD_S}s")
    # Shrunk, a guest that cannot page meets its first burst beyond the headroom with an OOM kill that doing
    # nothing avoids: it is kept whole until it has gone `burst_wait` without one.
    if pct > settings.maximal and not signals.can_page and signals.quiet_s < settings.burst_wait_s:
        return Proposal(HOLD, None, "kept-whole",
                        (f"usable {pct}% > {settings.maximal:g}% but it cannot page (no swap seen, no autodeflate) "
                         f"and has not gone {settings.burst_wait_s:g}s without a burst"))
    if pct > settings.maximal and actual - want >= DEADBAND_KIB:
        goal = max(want, actual - settings.max_shrink_kib)
        return Proposal(SHRINK, goal, "above-band", f"usable {pct}% > {settings.maximal:g}%: toward {mib(want)} MiB")
    if pct > settings.maximal:
        return Proposal(HOLD, None, "at-floor",
                        (f"usable {pct}% > {settings.maximal:g}% but at its target "
                         f"(floor {mib(settings.critical_kib)} MiB, headroom {mib(headroom)} MiB)"))
    return Proposal(HOLD, None, "in-band", f"usable {pct}% within {settings.minimal:g}-{settings.maximal:g}%")


def each(rule: Callable[[Figures, DomainSettings, int, Signals], Proposal]) -> Policy:
    """A whole-host policy from a rule that looks at one domain at a time."""
    def policy(view: HostView) -> Dict[str, Proposal]:
        return {c.name: rule(c.figures, c.settings, c.cap_kib, c.signals) for c in view.candidates}
    return policy


def target_fitted(view: HostView) -> Dict[str, Proposal]:
    """The target rule for each domain, then fitted to what the host can give. A guest with autodeflate
    keeps no headroom for its bursts: out of memory, its balloon gives them the memory back."""
    proposals = {c.name: target(c.figures, c.settings, c.cap_kib, _paging_view(c)) for c in view.candidates}
    return proposals if view.host is None else fit_host(proposals, view.candidates, view.host, view.untouched_kib,
                                                        view.shrinking_kib, view.host_recent)


def _paging_view(c: Candidate) -> Signals:
    """What the rules read of a candidate's signals: with autodeflate, out of memory its balloon gives the
    memory back, so it keeps no headroom for bursts and counts as a guest that can page."""
    return replace(c.signals, burst_kib=0, can_page=True) if c.facts.autodeflate else c.signals


def _signals(figures: Figures, settings: DomainSettings, history: History) -> Signals:
    """Swap-in or major faults at a paging rate since the last fresh report; swap in use; bursts."""
    swapped = max((figures.swap_out_kib or 0) - (figures.swap_in_kib or 0), 0)
    burst = int(max(history.burst_kib, history.ran_out_kib))
    lately = history.paged_at is not None and figures.last_update - history.paged_at < PAGED_HOLD_S
    # swap in use, or ever swapped out: a guest without swap reports 0 for both forever
    can_page = swapped > 0 or bool(figures.swap_out_kib)
    rising = (history.seen_used_kib is not None
              and figures.actual_kib - figures.usable_kib - history.seen_used_kib >= BURST_RISE_KIB)
    stamps = (history.first_seen, history.burst_at, figures.last_update if rising else None)
    since = max((t for t in stamps if t is not None), default=figures.last_update)
    quiet = float(figures.last_update - since)
    if history.seen_update is None or figures.last_update <= history.seen_update:
        return Signals(False, swapped, burst, lately, can_page, quiet)
    elapsed = figures.last_update - history.seen_update
    paging = (figures.swap_in_kib is not None and history.seen_swap_in_kib is not None
              and (figures.swap_in_kib - history.seen_swap_in_kib) / elapsed > SWAP_IN_KIB_PER_S)
    if not paging and figures.major_fault is not None and history.seen_major_fault is not None:
        rate = (figures.major_fault - history.seen_major_fault) / elapsed
        paging = rate > MAJOR_FAULTS_PER_S and usable_pct(figures) <= settings.maximal
    return Signals(paging, swapped, burst, lately or paging, can_page, quiet)


def cap_kib(stats: BalloonStats, settings: DomainSettings) -> Optional[int]:
    """The most a domain may have: its own maximum, lowered by a configured one."""
    return None if stats.maximum_kib is None else _capped(stats.maximum_kib, settings)


def _capped(maximum_kib: int, settings: DomainSettings) -> int:
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
    if figures.last_update > now + FUTURE_TOLERANCE_S:
        return SKIP, "future-stats", f"stats stamped {figures.last_update - now:.0f}s in the future"
    age = now - figures.last_update
    if age > limits.stale_after_s:
        return SKIP, "stale-stats", f"stats stale: last update {age:.0f}s ago"
    if figures.usable_kib > figures.actual_kib:
        # a report older than the last change compares usable with the size the guest had then
        why = f"inconsistent stats: usable {mib(figures.usable_kib)} MiB > actual {mib(figures.actual_kib)} MiB"
        return _awaiting(figures, history) or (SKIP, "inconsistent", why)
    return None


# ------------------------------------------------------------------ one domain

def _remembered(figures: Figures, signals: Signals, history: History) -> History:
    """The history with a report newer than the last one it saw."""
    if history.seen_update is not None and figures.last_update <= history.seen_update:
        return history
    history = history.saw(figures)
    return replace(history, paged_at=figures.last_update) if signals.paging else history


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
    reached = abs(figures.actual_kib - target_kib) <= TOLERANCE_KIB
    if not reached and now - changed_at < SETTLE_S:
        return history, (WAIT, "moving", f"balloon moving toward {mib(target_kib)} MiB")
    if not reached and abs(figures.actual_kib - from_kib) <= TOLERANCE_KIB:
        stuck = replace(history.settled(), unresponsive=True)
        return stuck, (SKIP, "unresponsive",
                       f"setmem to {mib(target_kib)} MiB had no effect after {SETTLE_S:g}s: leaving it alone")
    return history.settled(), None


def candidate(obs: Observation, settings: DomainSettings, history: History, now: float,
               limits: Limits) -> Union[Decision, Candidate]:
    """The domain as a policy may see it, or the decision that blocks it before any policy."""
    eligible = _eligibility(obs, settings, history, now, limits)
    if not isinstance(eligible, Figures):
        return _blocked(obs, eligible, history)
    figures = eligible
    signals = _signals(figures, settings, history)
    history, blocked = _settle(figures, _remembered(figures, signals, history), now)
    if blocked is not None:
        return _blocked(obs, blocked, history)
    assert obs.facts is not None  # _eligibility let it through: its XML was read
    return Candidate(obs.name, figures, settings, _capped(figures.maximum_kib, settings), signals, obs.facts, history)


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
            and (actual < target if decision.action == GROW else settings.critical_kib <= target < actual)):
        return decision
    return replace(decision, action=HOLD, target_kib=None, code="refused",
                   reason=f"refused {decision.action} to {target} KiB: outside the bounds (size {actual} KiB, "
                          f"floor {settings.critical_kib} KiB, cap {cap} KiB)")


# ------------------------------------------------------------------ every domain, and the host

def fit_host(proposals: Dict[str, Proposal], candidates: Sequence[Candidate], host: HostMemory,
             untouched_kib: int = 0, shrinking_kib: int = 0, host_recent: Sequence[int] = ()) -> Dict[str, Proposal]:
    """Growth only from what the host can back: what it spares above its reserve less what its guests were
    given and have not touched yet (guests that cannot page first, then the neediest; a guest paging or
    below its band may also have part of the reserve). For what the host lacks of its reserve, or what such
    a guest still lacks, reclaim: each guest's surplus over its target first (also for the host's untouched
    promises), then from guests that can page down to their fair share (even from one in need: it pages,
    where the other is OOM-killed), and for the host alone from the others down to theirs; never below a
    floor. When the host cannot swap and is about to kill a whole QEMU, the rest of its shortfall from
    whoever has the most above a floor, even what it uses: a process killed in one guest, not a guest lost.
    What is reclaimed for guests in need goes to them in the same cycle."""
    out = dict(proposals)
    known = {c.name: c for c in candidates if c.name in proposals}
    # PSI says tasks already stall: the host is short whatever MemAvailable says.
    spare = min(host.spare_kib, 0) if host.pressure else host.spare_kib
    budget = spare - max(untouched_kib, 0)
    out, given, unmet = _grown(out, known, host, spare, budget)
    short = max(given - spare, host.total_kib // 100 if host.pressure else 0)
    needed = max(short, sum(unmet.values()))
    if max(needed, given - budget) <= 0:
        return out
    # A host that cannot swap is about to lose a guest deep in its reserve, or in it and still falling (guests
    # fill a host faster than one cycle and a report). Then take a reserve more than it lacks, at once and
    # from one guest if it can, less what shrinks under way will give: taken a little at a time, from the
    # largest each cycle, every guest would pay in turn.
    coming = max(shrinking_kib, 0)
    falling = len(host_recent) >= 2 and host_recent[-1] < host_recent[-2]
    below_reserve = -(host.spare_kib + coming)
    oom_near = not host.can_swap and below_reserve > (0 if falling else host.reserve_kib * OOM_NEAR_RESERVE_SHARE)
    reclaimed, gave = _reclaim(out, known, host, (max(needed, given - budget), needed, short,
                                                  short + host.reserve_kib - coming if oom_near else 0), unmet)
    # Under PSI pressure what is freed stays with the host.
    if host.pressure:
        return reclaimed
    freed = sum(_kept_kib(out[n], known[n].figures) - p.target_kib for n, p in reclaimed.items()
                if p.action == SHRINK and p.target_kib is not None)
    lacking = {n: kib for n, kib in unmet.items() if n not in gave and kib >= TOLERANCE_KIB}
    return _topped_up(reclaimed, known, lacking, freed - short)


def _grown(out: Dict[str, Proposal], known: Mapping[str, Candidate], host: HostMemory, spare: int,
           budget: int) -> Tuple[Dict[str, Proposal], int, Dict[str, int]]:
    """The grows fitted to the host: (proposals, what they give in all, what each urgent grow still lacks,
    0 for one given all it asked: a guest in need, whose grow the reclaim leaves alone).
    A grow for headroom only comes from what the host can back (`budget`: its spare less what guests hold
    untouched); an urgent one (an OOM kill or swapping is near, a sure harm) from what it has now (`spare`)
    and part of the reserve: what it promised others is only a harm that may come, and if it does the
    reclaim takes it back from guests that can page. Not on a host that cannot swap: there that harm is a
    guest lost."""
    normal_left = max(budget, 0)
    urgent_left = max(spare, 0) if host.pressure or not host.can_swap else \
        max(spare + int(host.reserve_kib * URGENT_RESERVE_SHARE), 0)
    unmet: Dict[str, int] = {}
    given = 0
    for name, actual, target in _grows(out, known):
        urgent = out[name].code in URGENT
        give = min(target - actual, urgent_left if urgent else min(normal_left, urgent_left))
        if urgent:
            unmet[name] = target - actual - max(give, 0)
        if give < TOLERANCE_KIB:
            out[name] = _held(out[name], f"the host is at its reserve ({mib(host.available_kib)} MiB "
                                         f"available, {mib(host.reserve_kib)} MiB kept)")
            continue
        if give < target - actual:
            out[name] = out[name]._replace(target_kib=actual + give, code="host-limited",
                                           reason=f"{out[name].reason} (limited by the host's reserve)")
        given += give
        normal_left, urgent_left = max(normal_left - give, 0), urgent_left - give
    return out, given, unmet


def _topped_up(out: Dict[str, Proposal], known: Mapping[str, Candidate], unmet: Dict[str, int],
               freed_kib: int) -> Dict[str, Proposal]:
    """The urgent grows given what the reclaim frees, in the order _grows listed them."""
    out = dict(out)
    for name, lacking in unmet.items():
        give = min(lacking, freed_kib)
        if give < TOLERANCE_KIB:
            break
        current, actual = out[name], known[name].figures.actual_kib
        base = current.target_kib if current.action == GROW and current.target_kib is not None else actual
        out[name] = Proposal(GROW, base + give, "host-limited", f"{current.reason}, with memory taken back")
        freed_kib -= give
    return out


def _grows(proposals: Dict[str, Proposal], known: Mapping[str, Candidate]) -> List[Tuple[str, int, int]]:
    """(name, size, target) of each grow a policy planned: guests that cannot page first (denied, they are
    OOM-killed; the others page), then the neediest (lowest usable share)."""
    grows = [(name, known[name].figures.actual_kib, p.target_kib) for name, p in proposals.items()
             if p.action == GROW and p.target_kib is not None and name in known]
    return sorted(grows, key=lambda grow: (_paging_view(known[grow[0]]).can_page, usable_pct(known[grow[0]].figures)))


def _held(proposal: Proposal, but: str) -> Proposal:
    return Proposal(HOLD, None, "host-reserve", f"{proposal.reason}, but {but}")


def _reclaim(proposals: Dict[str, Proposal], known: Mapping[str, Candidate], host: HostMemory,
             deficits: Tuple[int, int, int, int], unmet: Mapping[str, int]) -> Tuple[Dict[str, Proposal], Set[str]]:
    """Memory back from the candidates in four stages, each up to its deficit (harmless, for guests in need,
    for the host, for a host about to lose a guest): the largest surplus over its target first, from any
    guest not in need; then from guests that can page, the largest excess over a fair share first, whether
    in need or not; then the same from the others not in need; then from any guest down to its floor, the
    one with the most above it first and all of that, so that one guest pays (an OOM kill inside it) rather
    than all. Never below a floor; a grow planned this cycle is undone first. Short of that last stage a
    guest at its fair share keeps what it uses: taking that from it too only spreads the OOM kills. Also the
    names of guests in need that gave memory (their grow is off)."""
    floors = {name: c.settings.critical_kib for name, c in known.items()}
    fair = _fair_shares(known, host, floors)
    plan = {name: _kept_kib(proposals[name], c.figures) for name, c in known.items()
            if proposals[name].action in (HOLD, SHRINK, GROW)}
    calm = [name for name in plan if name not in unmet]
    pageable = [name for name in plan if _paging_view(known[name]).can_page]
    wanted = {name: max(target_size_kib(known[name].figures, known[name].settings, _paging_view(known[name])),
                        floors[name]) for name in plan}
    taken = 0
    for names, goal, deficit in ((calm, wanted, deficits[0]), (pageable, fair, deficits[1]),
                                 (calm, fair, deficits[2])):
        plan, taken = _surpluses_taken(plan, names, goal, deficit, taken)
    if deficits[3] > 0 and plan:
        # the guest that pays gives all it has above its floor: its OOM killer frees its largest process at
        # once, where a part would leave it to fill again while the others fill the host
        most = max(plan[name] - floors[name] for name in plan)
        plan, taken = _surpluses_taken(plan, list(plan), floors, max(deficits[3], taken + most), taken)
    why = (f"host below its reserve ({mib(host.available_kib)} MiB available, {mib(host.reserve_kib)} MiB kept)"
           if host.spare_kib < 0 else "host memory pressure (PSI)" if host.pressure else
           "memory for guests that cannot page, or the host's promises")
    if deficits[3] > 0:
        why += " and it cannot swap: a process killed in a guest rather than a guest lost"
    out = dict(proposals)
    for name, size in plan.items():
        if name not in unmet or size < _kept_kib(proposals[name], known[name].figures):
            out[name] = _reclaimed(out[name], known[name].figures.actual_kib, size, floors[name], why)
    gave = {name for name in unmet if out[name].action == SHRINK}
    return out, gave


def _kept_kib(proposal: Proposal, figures: Figures) -> int:
    """What a domain is counted at before reclaiming: a shrink planned this cycle at its target, anything
    else at its size (a grow planned this cycle is undone)."""
    if proposal.action == SHRINK and proposal.target_kib is not None:
        return proposal.target_kib
    return figures.actual_kib


def _surpluses_taken(plan: Dict[str, int], names: Sequence[str], wanted: Mapping[str, int], deficit: int,
                     taken: int) -> Tuple[Dict[str, int], int]:
    """The plan with up to `deficit` less what earlier stages took (`taken`) taken from these names, the
    largest surplus over what each wants first; what all stages took so far."""
    plan = dict(plan)
    for name in sorted(names, key=lambda name: plan[name] - wanted[name], reverse=True):
        take = min(max(plan[name] - wanted[name], 0), max(deficit - taken, 0))
        plan[name] -= take
        taken += take
    return plan, taken


def _fair_shares(known: Mapping[str, Candidate], host: HostMemory, floors: Dict[str, int]) -> Dict[str, int]:
    """Each guest's share of what the guests can have (their sizes now and what the host can spare),
    in proportion to its cap times its shares; at least its floor."""
    room = sum(c.figures.actual_kib for c in known.values()) + host.spare_kib
    weights = {name: known[name].cap_kib * known[name].settings.shares for name in floors}
    total = sum(weights.values())
    return {name: max(floors[name], room * weight // total) for name, weight in weights.items()}


def _reclaimed(proposal: Proposal, actual_kib: int, size_kib: int, floor_kib: int, why: str) -> Proposal:
    if actual_kib - size_kib >= TOLERANCE_KIB and size_kib >= floor_kib:
        return Proposal(SHRINK, size_kib, "host-reserve", why)
    if proposal.action == GROW:
        return _held(proposal, why)
    return proposal
