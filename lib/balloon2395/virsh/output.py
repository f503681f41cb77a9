"""Parsers for what virsh prints (under LC_ALL=C), by key, never by line position.

Pure functions: text in, dataclasses out. Output that does not have the
expected shape raises VirshOutputError rather than yielding numbers the daemon
might act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple


class VirshOutputError(ValueError):
    """virsh printed something that is not the format it documents."""


@dataclass(frozen=True)
class BalloonStats:
    """One domain's balloon figures; sizes in KiB, last_update in epoch seconds.

    Fields the guest does not report are None (virsh omits them). `problem` says why
    the block cannot be trusted although it parsed (one figure given twice).
    """

    name: str
    actual_kib: Optional[int] = None
    maximum_kib: Optional[int] = None
    usable_kib: Optional[int] = None
    available_kib: Optional[int] = None
    unused_kib: Optional[int] = None
    disk_caches_kib: Optional[int] = None
    swap_in_kib: Optional[int] = None
    swap_out_kib: Optional[int] = None
    major_fault: Optional[int] = None
    minor_fault: Optional[int] = None
    rss_kib: Optional[int] = None
    last_update: Optional[int] = None
    problem: Optional[str] = None


# virsh key (dommemstat spelling; domstats uses '-' in last-update and
# 'current' for actual) -> BalloonStats field
_FIELDS = {
    "actual": "actual_kib",
    "current": "actual_kib",
    "maximum": "maximum_kib",
    "usable": "usable_kib",
    "available": "available_kib",
    "unused": "unused_kib",
    "disk_caches": "disk_caches_kib",
    "swap_in": "swap_in_kib",
    "swap_out": "swap_out_kib",
    "major_fault": "major_fault",
    "minor_fault": "minor_fault",
    "rss": "rss_kib",
    "last_update": "last_update",
}
_BY_KEY = {**_FIELDS, **{key.replace("_", "-"): field for key, field in _FIELDS.items()}}
_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
_KNOWN_KEYS = frozenset(_BY_KEY) | {"hugetlb_pgalloc", "hugetlb_pgfail"}  # need no _KEY check
_DOMAIN_HEADER = re.compile(r"^Domain: '(.*)'$")
_BALLOON = "  balloon."


def _whole(text: str) -> bool:
    # ASCII digits only: str.isdigit() alone also takes '²' (int() then fails) and other scripts'
    # digits. Two C calls, not a regex: this runs for every figure of every domain every cycle.
    return text.isascii() and text.isdigit()


def _stats(name: str, pairs: List[Tuple[str, str]]) -> BalloonStats:
    values: Dict[str, int] = {}
    given: Dict[str, str] = {}  # field -> the key that gave it
    problem = None
    for key, raw in pairs:
        field_name = _BY_KEY.get(key)
        if field_name is None:
            continue  # hugetlb_* and fields newer libvirt may add
        if not _whole(raw):
            raise VirshOutputError(f"{name}: {key} is not a whole number: {raw!r}")
        if field_name in given:
            # 'current' and 'actual', or one key twice: which one virsh meant is unknowable,
            # and the last one winning would make a guess look like a figure.
            problem = problem or f"{given[field_name]} and {key} both given in one report"
        given[field_name] = key
        values[field_name] = int(raw)
    return BalloonStats(name=name, problem=problem, **values)


def parse_domstats(text: str) -> List[BalloonStats]:
    """`virsh domstats --balloon [--list-running]`: a block per domain."""
    domains: List[BalloonStats] = []
    name: Optional[str] = None
    pairs: List[Tuple[str, str]] = []
    for number, line in enumerate(text.split("\n"), 1):
        # Nine lines in ten, so checked first and cheaply: a per-cycle cost with 100 guests.
        if line.startswith(_BALLOON):
            key, sep, value = line[len(_BALLOON):].partition("=")
            if name is None or not sep or key not in _KNOWN_KEYS and not _KEY.match(key):
                raise VirshOutputError(f"line {number}: unexpected key {key!r}")
            pairs.append((key, value))
            continue
        if not line.strip():
            continue
        header = _DOMAIN_HEADER.match(line)
        if header:
            if name is not None:
                domains.append(_stats(name, pairs))
            name, pairs = header.group(1), []
            continue
        key, sep, value = line.strip().partition("=")
        if name is None or not line.startswith("  ") or not sep:
            raise VirshOutputError(f"line {number} is not part of a domain block: {line[:80]!r}")
    if name is not None:
        domains.append(_stats(name, pairs))
    return domains


def parse_dommemstat(name: str, text: str) -> BalloonStats:
    """`virsh dommemstat DOM`: `key value` lines, fields present only if reported."""
    pairs: List[Tuple[str, str]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not _KEY.match(parts[0]):
            raise VirshOutputError(f"line {number} is not 'key value': {line[:80]!r}")
        pairs.append((parts[0], parts[1]))
    return _stats(name, pairs)  # without a balloon device only 'rss' is there


def parse_dominfo_max_kib(text: str) -> int:
    """`virsh dominfo DOM`'s "Max memory:   1048576 KiB" line."""
    for line in text.split("\n"):
        key, _, value = line.partition(":")
        if key.strip() == "Max memory":
            parts = value.split()
            if len(parts) == 2 and _whole(parts[0]) and parts[1] == "KiB":
                return int(parts[0])
    raise VirshOutputError("dominfo has no 'Max memory: N KiB' line")


def parse_nodememstats(text: str) -> Dict[str, int]:
    """`virsh nodememstats`: `total  :   24684084 KiB` lines -> {'total': KiB, ...}."""
    out = {}
    for line in text.split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        parts = value.split()
        if not sep or len(parts) != 2 or not _whole(parts[0]) or parts[1] != "KiB":
            raise VirshOutputError(f"nodememstats line is not 'key : N KiB': {line[:80]!r}")
        out[key.strip()] = int(parts[0])
    if "total" not in out or "free" not in out:
        raise VirshOutputError("nodememstats has no total or free")
    return out
