"""Sizes: KiB inside the daemon; MiB (binary) at the edges, as the original spoke."""

from __future__ import annotations

import math
import re
from typing import Optional

from .quoted import shown

KIB_PER_MIB = 1024
PAGE_KIB = 4  # a guest page: fault counters count these

_UNITS_KIB = {
    "k": 1, "kib": 1, "kb": 1,
    "m": 1024, "mib": 1024, "mb": 1024,
    "g": 1024 ** 2, "gib": 1024 ** 2, "gb": 1024 ** 2,
    "t": 1024 ** 3, "tib": 1024 ** 3, "tb": 1024 ** 3,
}
# Config sizes are binary whatever the suffix: an operator writing "512MB" for a
# guest means MiB, and the original's decimal "mb" to virsh is the defect we fix.
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size_kib(value: object) -> int:
    """A size from config or a flag: a bare number is MiB (as in the original)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 300, 512MiB or 2GiB, got a boolean")
    if isinstance(value, (int, float)):
        return _kib(value, KIB_PER_MIB, value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 300, 512MiB or 2GiB, got {type(value).__name__}")
    if value.strip().startswith("-"):
        raise ValueError(f"must not be negative, got {shown(value)}")
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"expected a size such as 300, 512MiB or 2GiB, got {shown(value)}")
    number, unit = match.groups()
    factor = _UNITS_KIB.get(unit.lower()) if unit else KIB_PER_MIB
    if factor is None:
        raise ValueError(f"unknown unit {shown(unit)} in {shown(value)} (use KiB, MiB, GiB or TiB)")
    return _kib(float(number), factor, value)


def _kib(number: float, factor: int, raw: object) -> int:
    if number < 0:
        raise ValueError(f"must not be negative, got {shown(raw)}")
    kib = float(number) * factor if abs(number) < 2 ** 53 else math.inf  # a huge int: no OverflowError
    if not math.isfinite(kib):
        raise ValueError(f"expected a finite size, got {shown(raw)}")
    return int(round(kib))


def mib(kib: int) -> int:
    """Whole MiB for logs and tables (floor, like the original's integer shell maths)."""
    return kib // KIB_PER_MIB


def size_text(kib: int) -> str:
    """A size as the config file takes it back: `1GiB`, `300MiB`, else `1536KiB`."""
    if kib and kib % (1024 ** 2) == 0:
        return f"{kib // 1024 ** 2}GiB"
    if kib % KIB_PER_MIB == 0:
        return f"{kib // KIB_PER_MIB}MiB"
    return f"{kib}KiB"


def mib_text(kib: Optional[int], unit: bool = True) -> str:
    """Whole MiB as the views and logs print a size, `-` for one not known: `2048 MiB`, or `2048` where the
    column or the line says the unit."""
    return "-" if kib is None else f"{mib(kib)} MiB" if unit else str(mib(kib))
