"""The knobs that decide one domain's memory: config.py builds them from the file, the flags and the
domain's own rules; the decision core reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .units import KIB_PER_MIB


@dataclass(frozen=True)
class DomainSettings:
    """The knobs that decide one domain's memory, after rules are applied."""

    minimal: float = 25.0
    maximal: float = 35.0
    floor_kib: int = 300 * KIB_PER_MIB
    addram_kib: int = 100 * KIB_PER_MIB
    rmram_kib: int = 50 * KIB_PER_MIB
    maximum_kib: Optional[int] = None  # a cap below the domain's own <memory>
    exclude: bool = False
    manage_windows: bool = False
    headroom_kib: int = 256 * KIB_PER_MIB  # target policy: usable never planned below this
    max_shrink_kib: int = 256 * KIB_PER_MIB  # target policy: the most one shrink takes
    shares: int = 1000  # weight under host pressure: fewer shares give back more
    # target: a guest that cannot page is shrunk for saving only once it went this long without a burst
    burst_wait_s: float = 600.0
    # target: "needed" shrinks the guest below the size the daemon found it at only for a host that needs the
    # memory; "always" lets the band shrink it on any host, where a burst then finds it smaller than doing
    # nothing would: more saved, and starving where doing nothing starves none (docs/simulator.md)
    idle_shrink: str = "needed"
    invalid: Optional[str] = None  # why the domain's own metadata could not be used
