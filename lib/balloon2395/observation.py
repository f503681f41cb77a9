"""What one read observed, as the decision core takes it: each running domain (Observation) and the
host's memory (HostMemory). Records only: observe.py and host.py read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .virsh.domain_xml import DomainFacts
from .virsh.output import BalloonStats


@dataclass(frozen=True)
class Observation:
    """One domain as a cycle sees it: its figures, its facts, and what the read says of it."""

    stats: BalloonStats
    facts: Optional[DomainFacts] = None  # None: dumpxml could not be read yet
    stats_since: Optional[float] = None  # when the daemon switched the stats period on
    uuid: Optional[str] = None  # what every call names it by; None: the read gave it no single uuid
    problem: Optional[str] = None  # why the read cannot be trusted for it (given twice, ...)

    @property
    def name(self) -> str:
        return self.stats.name


@dataclass(frozen=True)
class HostMemory:
    """The host's side: what it has, what it can still give, what it keeps for itself."""

    total_kib: int
    available_kib: int
    reserve_kib: int
    pressure: bool = False  # PSI says tasks already stall on memory
    # The host's free swap (None: not known, as through nodememstats). Out of RAM, a host with less free swap
    # than its reserve does not swap for long: its OOM killer kills a whole QEMU.
    swap_free_kib: Optional[int] = None

    @property
    def spare_kib(self) -> int:
        return self.available_kib - self.reserve_kib

    @property
    def can_swap(self) -> bool:
        """Out of RAM, the host would swap (slow guests) rather than kill a QEMU (a guest lost); not known
        reads as no."""
        return self.swap_free_kib is not None and self.swap_free_kib >= self.reserve_kib
