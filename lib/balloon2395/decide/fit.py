"""The target rule fitted to the host: growth only from what the host can back, and reclaiming, in stages,
what the host or a guest in need lacks."""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Set, Tuple

from ..observation import HostMemory
from ..units import mib
from .figures import Figures, usable_pct
from .records import GROW, HOLD, SHRINK, URGENT, Candidate, HostView, Proposal
from .rules import lowest_in_band_kib, paging_view, target, target_size_kib
from .tuning import TUNING


def target_fitted(view: HostView) -> Dict[str, Proposal]:
    """The target rule for each domain, kept to its found size where the host does not need the memory, then
    fitted to what the host can give. A guest with autodeflate keeps no headroom for its bursts: out of
    memory, its balloon gives them the memory back."""
    proposals = {c.name: target(c.figures, c.settings, c.cap_kib, paging_view(c)) for c in view.candidates}
    proposals = _as_needed(proposals, view)
    return proposals if view.host is None else fit_host(proposals, view, view.host)


def _as_needed(proposals: Dict[str, Proposal], view: HostView) -> Dict[str, Proposal]:
    """`idle_shrink: needed`: a guest shrunk below the size it was found at meets a burst that doing nothing
    would have left room for, and one shrunk below the size it grew to for a burst meets the next one short,
    so while the host can back what its guests were given (its spare less what they have not touched:
    `budget`), or is not watched, the band takes it no lower than the larger of the two. A host that cannot
    (or under PSI pressure) needs the memory: there the band shrinks as with `always`. A guest below that
    size (shrunk while the host needed it) is given it back from what the host can back beyond a margin, so
    that a host near the line does not shrink and restore in turn."""
    host = view.host
    budget = None if host is None else _backed_kib(host, view.untouched_kib)
    if host is not None and (host.pressure or (budget is not None and budget < 0)):
        return proposals
    margin = 0 if host is None else int(host.reserve_kib * TUNING.restore_margin_share)
    out = dict(proposals)
    for c in view.candidates:
        if c.settings.idle_shrink != "needed" or c.name not in out:
            continue
        proposal, actual = out[c.name], c.figures.actual_kib
        found = actual if c.history.found_kib is None else c.history.found_kib
        kept = min(max(found, c.history.peak_kib or actual), c.cap_kib)
        size = (f"{mib(kept)} MiB it was found at" if kept == min(found, c.cap_kib) else
                f"{mib(kept)} MiB it grew to (found at {mib(found)} MiB)")
        if proposal.action == SHRINK and proposal.target_kib is not None and proposal.target_kib < kept:
            proposal = (proposal._replace(target_kib=kept, reason=f"{proposal.reason}, no lower than the "
                                          f"{size} (idle_shrink: needed)")
                        if actual - kept >= TUNING.deadband_kib else
                        Proposal(HOLD, None, "not-needed",
                                 f"{proposal.reason}, but no lower than the {size} while the host does not "
                                 "need the memory (idle_shrink: needed)"))
        if budget is not None and proposal.action != GROW and kept - actual >= TUNING.deadband_kib:
            give = min(kept - actual, budget - margin)
            if give >= TUNING.deadband_kib:
                proposal = Proposal(GROW, actual + give, "restore",
                                    f"below the {size}, and the host can back it "
                                    f"({mib(budget)} MiB to spare after what guests were given)")
                budget -= give
        out[c.name] = proposal
    return out


def fit_host(proposals: Dict[str, Proposal], view: HostView, host: HostMemory) -> Dict[str, Proposal]:
    """Growth only from what the host can back: what it spares above its reserve less what its guests were
    given and have not touched yet (guests that cannot page first, then the neediest; a guest paging or
    below its band may also have part of the reserve). For what the host lacks of its reserve, or what such
    a guest still lacks, reclaim: each guest's surplus over its target first (also for the host's untouched
    promises), then from guests that can page down to their fair share (even from one in need: it pages,
    where the other is OOM-killed), for guests in need from the others what they hold above their fair share
    and their band's bottom, and for the host alone from the others down to their fair share; never below a
    floor. When the host cannot swap and is about to kill a whole QEMU, the rest of its shortfall from what
    the guests not in need hold above their band's bottom, and only then from whoever has the most above a
    floor, even what it uses: a process killed in one guest, not a guest lost.
    What is reclaimed for guests in need goes to them in the same cycle."""
    out = dict(proposals)
    known = {c.name: c for c in view.candidates if c.name in proposals}
    spare = _spare_kib(host)
    budget = _backed_kib(host, view.untouched_kib)
    out, given, unmet = _grown(out, known, host, spare, budget)
    short = max(given - spare, host.total_kib // 100 if host.pressure else 0)
    needed = max(short, sum(unmet.values()))
    if max(needed, given - budget) <= 0:
        return out
    # A host that cannot swap is about to lose a guest deep in its reserve, or in it and still falling (guests
    # fill a host faster than one cycle and a report). Then take a reserve more than it lacks, at once and
    # from one guest if it can, less what shrinks under way will give: taken a little at a time, from the
    # largest each cycle, every guest would pay in turn.
    coming = max(view.shrinking_kib, 0)
    falling = len(view.host_recent) >= 2 and view.host_recent[-1] < view.host_recent[-2]
    below_reserve = -(host.spare_kib + coming)
    deep = host.reserve_kib * TUNING.oom_near_reserve_share
    oom_near = not host.can_swap and below_reserve > (0 if falling else deep)
    reclaimed, gave = _reclaim(out, known, host, (max(needed, given - budget), needed, short,
                                                  short + host.reserve_kib - coming if oom_near else 0), unmet,
                               view.bystanders)
    # Under PSI pressure what is freed stays with the host.
    if host.pressure:
        return reclaimed
    freed = sum(_kept_kib(out[n], known[n].figures) - p.target_kib for n, p in reclaimed.items()
                if p.action == SHRINK and p.target_kib is not None)
    lacking = {n: kib for n, kib in unmet.items() if n not in gave and kib >= TUNING.tolerance_kib}
    return _topped_up(reclaimed, known, lacking, freed - short)


def _spare_kib(host: HostMemory) -> int:
    """What the host spares above its reserve; PSI says tasks already stall: short whatever MemAvailable says."""
    return min(host.spare_kib, 0) if host.pressure else host.spare_kib


def _backed_kib(host: HostMemory, untouched_kib: int) -> int:
    """What the host can back beyond what its guests were given and have not touched yet."""
    return _spare_kib(host) - max(untouched_kib, 0)


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
        max(spare + int(host.reserve_kib * TUNING.urgent_reserve_share), 0)
    unmet: Dict[str, int] = {}
    given = 0
    for name, actual, wanted in _grows(out, known):
        urgent = out[name].code in URGENT
        give = min(wanted - actual, urgent_left if urgent else min(normal_left, urgent_left))
        if urgent:
            unmet[name] = wanted - actual - max(give, 0)
        if give < TUNING.tolerance_kib:
            out[name] = _held(out[name], f"the host is at its reserve ({mib(host.available_kib)} MiB "
                                         f"available, {mib(host.reserve_kib)} MiB kept)")
            continue
        if give < wanted - actual:
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
        if give < TUNING.tolerance_kib:
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
    return sorted(grows, key=lambda grow: (paging_view(known[grow[0]]).can_page, usable_pct(known[grow[0]].figures)))


def _held(proposal: Proposal, but: str) -> Proposal:
    return Proposal(HOLD, None, "host-reserve", f"{proposal.reason}, but {but}")


def _reclaim(proposals: Dict[str, Proposal], known: Mapping[str, Candidate], host: HostMemory,
             deficits: Tuple[int, int, int, int], unmet: Mapping[str, int],
             bystanders: Sequence[Tuple[int, int]]) -> Tuple[Dict[str, Proposal], Set[str]]:
    """Memory back from the candidates in stages, each up to its deficit (harmless, for guests in need,
    for the host, for a host about to lose a guest): the largest surplus over its target first, from any
    guest not in need; then from guests that can page, the largest excess over a fair share first, whether
    in need or not; then for guests in need from the others not in need, above their fair share and their
    band's bottom; then the same for the host down to a fair share (on a host that can swap, a guest that
    cannot page keeps what it uses); for a host about to lose a guest, what the guests not in need hold
    above their band's bottom (their cache and free memory beyond the headroom: no process killed); and
    only if that is not enough, from any guest down to its floor, the
    one with the most above it first and all of that, so that one guest pays (an OOM kill inside it) rather
    than all. Never below a floor; a grow planned this cycle is undone first. Short of that last stage a
    guest at its fair share keeps what it uses: taking that from it too only spreads the OOM kills. Also the
    names of guests in need that gave memory (their grow is off)."""
    floors = {name: c.settings.floor_kib for name, c in known.items()}
    fair = _fair_shares(known, host, floors, bystanders)
    plan = {name: _kept_kib(proposals[name], c.figures) for name, c in known.items()
            if proposals[name].action in (HOLD, SHRINK, GROW)}
    calm = [name for name in plan if name not in unmet]
    views = {name: paging_view(known[name]) for name in plan}
    pageable = [name for name in plan if views[name].can_page]
    wanted = {name: max(target_size_kib(known[name].figures, known[name].settings, views[name]),
                        floors[name]) for name in plan}
    # For the host alone, a guest that cannot page keeps what it uses where the host can swap: there the host
    # short of its reserve swaps (starved seconds), where taking that guest's memory is an OOM kill in it.
    in_use = {name: known[name].figures.actual_kib - known[name].figures.usable_kib for name in plan}
    kept = {name: max(fair[name], in_use[name] if host.can_swap and not views[name].can_page else 0)
            for name in plan}
    # For a guest in need, a guest above its fair share gives what it holds above the bottom of its band: a
    # burst of its own that may come, against an OOM kill or swapping that is coming. For a host about to
    # lose a guest, a guest gives down to that bottom before one guest pays with what it uses: left with no
    # headroom, a guest's next allocation is an OOM kill as sure as the one that pays.
    bottom = {name: max(floors[name], lowest_in_band_kib(known[name].figures, known[name].settings, views[name]))
              for name in plan}
    lean = {name: max(fair[name], bottom[name]) for name in plan}
    taken = 0
    stages = ((calm, wanted, deficits[0]), (pageable, fair, deficits[1]), (calm, lean, deficits[1]),
              (calm, kept, deficits[2]), (calm, bottom, deficits[3]))
    for names, goal, deficit in stages:
        plan, taken = _surpluses_taken(plan, names, goal, deficit, taken)
    why = (f"host below its reserve ({mib(host.available_kib)} MiB available, {mib(host.reserve_kib)} MiB kept)"
           if host.spare_kib < 0 else "host memory pressure (PSI)" if host.pressure else
           "memory for guests that cannot page, or the host's promises")
    if deficits[3] > 0:
        why += " and it cannot swap"
    if taken < deficits[3] and plan:
        # the guest that pays gives all it has above its floor: its OOM killer frees its largest process at
        # once, where a part would leave it to fill again while the others fill the host
        most = max(plan[name] - floors[name] for name in plan)
        plan, taken = _surpluses_taken(plan, list(plan), floors, max(deficits[3], taken + most), taken)
        why += ": a process killed in a guest rather than a guest lost"
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


def _fair_shares(known: Mapping[str, Candidate], host: HostMemory, floors: Dict[str, int],
                 bystanders: Sequence[Tuple[int, int]]) -> Dict[str, int]:
    """Each guest's share of what the guests can have (their sizes now and what the host can spare),
    in proportion to its cap times its shares; at least its floor. Every running guest counts, the ones not
    deciding this cycle too: shares over a few small guests alone would take them below what they use."""
    room = sum(c.figures.actual_kib for c in known.values()) + sum(size for size, _ in bystanders) + host.spare_kib
    weights = {name: known[name].cap_kib * known[name].settings.shares for name in floors}
    total = sum(weights.values()) + sum(weight for _, weight in bystanders)
    return {name: max(floors[name], room * weight // total) for name, weight in weights.items()}


def _reclaimed(proposal: Proposal, actual_kib: int, size_kib: int, floor_kib: int, why: str) -> Proposal:
    if actual_kib - size_kib >= TUNING.tolerance_kib and size_kib >= floor_kib:
        return Proposal(SHRINK, size_kib, "host-reserve", why)
    if proposal.action == GROW:
        return _held(proposal, why)
    return proposal
