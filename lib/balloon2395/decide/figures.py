"""A domain's figures once the safety checks passed: what every rule works on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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


def usable_pct(figures: Figures) -> int:
    """Integer percent, as the original's shell arithmetic computed it."""
    return figures.usable_kib * 100 // figures.actual_kib
