"""One cycle's decisions: every domain through the safety checks (eligibility.py), the configured policy
over the domains that passed, and `bounded()` over whatever it proposed."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..observation import HostMemory, Observation
from ..settings import DomainSettings
from .eligibility import bounded, candidate, cap_kib
from .fit import target_fitted
from .history import History
from .peers import PEERS
from .records import HOLD, Candidate, Decision, HostView, Limits, Policy, Proposal
from .rules import each, step

# target first: the default, and the order --help and the config checks list them in
POLICIES: Dict[str, Policy] = {"target": target_fitted, "step": each(step), **PEERS}


def decide(obs: Observation, settings: DomainSettings, history: History, now: float,
           limits: Limits = Limits(), policy: str = "step") -> Decision:
    """One domain alone, the host not watched."""
    return decide_all([obs], {obs.name: settings}, {obs.name: history}, None, now, limits, policy)[0]


def decide_all(observations: Sequence[Observation], settings: Mapping[str, DomainSettings],
               histories: Mapping[str, History], host: Optional[HostMemory], now: float,
               limits: Limits = Limits(), policy: str = "target", host_recent: Tuple[int, ...] = ()) -> List[Decision]:
    """Every domain's decision: the safety checks, then the policy over the candidates, then
    `bounded()` over what it proposed."""
    checked = [candidate(obs, settings[obs.name], histories.get(obs.name, History()), now, limits)
               for obs in observations]
    candidates = tuple(c for c in checked if isinstance(c, Candidate))
    others = [obs for obs, item in zip(observations, checked) if not isinstance(item, Candidate)]
    proposals = POLICIES[policy](HostView(candidates, host, now, untouched_kib(observations), host_recent,
                                          shrinking_kib(observations, histories), bystanders(others, settings)))
    decisions = []
    for obs, item in zip(observations, checked):
        if isinstance(item, Candidate):
            proposal = proposals.get(item.name) or Proposal(HOLD, None, "in-band", f"no change proposed by {policy}")
            item = Decision(item.name, proposal.action, proposal.code, proposal.reason, item.figures.actual_kib,
                            proposal.target_kib, item.history)
        decisions.append(bounded(item, obs.stats, settings[obs.name]))
    return decisions


def untouched_kib(observations: Sequence[Observation]) -> int:
    """What the running domains were given and have not touched: each one's size less its QEMU RSS, where
    both are known. QEMU's own memory in the RSS makes this an underestimate, never an overestimate."""
    return sum(max(obs.stats.actual_kib - obs.stats.rss_kib, 0) for obs in observations
               if obs.stats.actual_kib is not None and obs.stats.rss_kib is not None)


def bystanders(observations: Sequence[Observation],
               settings: Mapping[str, DomainSettings]) -> Tuple[Tuple[int, int], ...]:
    """(size, cap × shares) of each of these domains whose size and maximum are known."""
    out = []
    for obs in observations:
        cap = cap_kib(obs.stats, settings[obs.name])
        if obs.stats.actual_kib is not None and cap is not None:
            out.append((obs.stats.actual_kib, cap * settings[obs.name].shares))
    return tuple(out)


def shrinking_kib(observations: Sequence[Observation], histories: Mapping[str, History]) -> int:
    """What the shrinks not yet confirmed will still give back: each such domain's size less the target."""
    total = 0
    for obs in observations:
        pending = histories[obs.name].pending() if obs.name in histories else None
        if pending is not None and obs.stats.actual_kib is not None and pending[2] < pending[1]:
            total += max(obs.stats.actual_kib - pending[2], 0)
    return total
