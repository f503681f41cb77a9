"""What a policy sees (a Candidate in a HostView) and proposes (a Proposal), and the Decision a cycle
makes for each domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from ..observation import HostMemory
from ..settings import DomainSettings
from ..virsh.domain_xml import DomainFacts
from .figures import Figures
from .history import History, Signals

GROW, SHRINK, HOLD, WAIT, SKIP = "grow", "shrink", "hold", "wait", "skip"
CHANGES = (GROW, SHRINK)
URGENT = ("paging", "below-band")  # grows that avert swapping or an OOM kill, not only keep headroom


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
    # (size, cap × shares) of each running domain that is not a candidate this cycle (a change under way, a
    # stale report): it holds part of the host, so a fair share of it counts it; a policy does not move it
    bystanders: Tuple[Tuple[int, int], ...] = ()


# A policy proposes for any of the candidates; one it leaves out is held.
Policy = Callable[[HostView], Dict[str, Proposal]]
