"""Which run of a domain the daemon is looking at: its (uuid, id), read with the balloon figures.

A domain destroyed and started again between two cycles keeps its name, but
libvirt gives every start a new id. So the one virsh process of a cycle runs

    domstats --balloon --list-running ; list --uuid --id --name --state-running

and what the daemon keeps per domain lifetime (facts from dumpxml, whether it
switched the stats period on, its history of changes) starts afresh when the
(uuid, id) under a name changes. The uuid is also how every later call of the cycle
names the domain: virsh takes a `--domain` that looks like a number for an id
first, so a domain named "1" is reached by name only while no domain has id 1.
`domstats --cpu-total` looked like a cheaper
sign (a new QEMU process counts its CPU time from 0), but it counts the new
guest's boot and can already be above the old value
(fixtures domstats-cpu-total-domain.before-restart / .after-restart).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from . import PROG
from .virsh.commands import VirshCommands, VirshError
from .virsh.output import BalloonStats, VirshOutputError, parse_domstats

log = logging.getLogger(PROG)

Lifetime = Tuple[str, Optional[int]]  # (uuid, domain id); the id is None from a virsh without `list --id`
READ_LINE = "domstats --balloon --list-running ; list --uuid --id --name --state-running"
READ_LINE_NO_ID = "domstats --balloon --list-running ; list --uuid --name --state-running"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# `UUID [ID] NAME` after a newline (the list follows domstats' output), the name raw to the end of the
# line. No domstats line starts like one: they start with "Domain: '" or a blank.
_LISTED = {True: re.compile(rf"\n({_UUID}) (\d+) ([^\n]+)"), False: re.compile(rf"\n({_UUID})() ([^\n]+)")}


@dataclass(frozen=True)
class RunningRead:
    """One read of the running domains: their figures, the (uuid, id) of each name, and the names
    the read contradicts itself on, which no call may address this cycle."""

    stats: List[BalloonStats]  # one per name (the first block of a name given twice), in domstats' order
    lifetimes: Dict[str, Lifetime]
    conflicts: Dict[str, str]  # name -> what is wrong with the read for it


def parse_running(text: str, with_ids: bool = True) -> RunningRead:
    """The output of READ_LINE (or READ_LINE_NO_ID)."""
    if text and not text.endswith("\n"):
        # virsh ends every command's output with a newline: without it the text was cut, perhaps
        # inside a number, which would still parse.
        raise VirshOutputError(f"output cut short: ends with {text[-40:]!r}")
    pattern = _LISTED[with_ids]
    # Where the list starts, found by one search in C (1500 lines of domstats at 100 guests).
    first = pattern.search(text)
    end = first.start() + 1 if first else len(text)
    listed = [(uuid, int(domain_id) if domain_id else None, name)
              for uuid, domain_id, name in pattern.findall(text, end - 1)]
    return _checked(parse_domstats(text[:end]), listed)


def _checked(blocks: List[BalloonStats], listed: List[Tuple[str, Optional[int], str]]) -> RunningRead:
    """A name or uuid the read gives twice could be either domain: such a name is refused, not
    resolved by whichever came last."""
    conflicts: Dict[str, str] = {}
    for name, count in Counter(s.name for s in blocks).items():
        if count > 1:
            conflicts[name] = f"domstats gives {count} blocks for this name"
    for name, count in Counter(name for _, _, name in listed).items():
        if count > 1:
            conflicts[name] = f"listed {count} times with different uuids or ids"
    names_of: Dict[str, List[str]] = {}
    for uuid, _, name in listed:
        names_of.setdefault(uuid, []).append(name)
    for uuid, names in names_of.items():
        for name in names if len(names) > 1 else ():
            conflicts.setdefault(name, f"its uuid {uuid} is listed under {len(names)} names")
    first: Dict[str, BalloonStats] = {}
    for block in blocks:
        first.setdefault(block.name, block)
    lifetimes = {name: (uuid, domain_id) for uuid, domain_id, name in listed if name not in conflicts}
    return RunningRead(list(first.values()), lifetimes, conflicts)


class RunningReader:
    """One virsh process a cycle for the balloon figures and the lifetimes. A virsh whose `list`
    has no --id still gives the uuids; restarts between two cycles then go unnoticed."""

    def __init__(self, virsh: VirshCommands) -> None:
        self.virsh = virsh
        self.with_ids = True

    def read(self) -> RunningRead:
        if self.with_ids:
            try:
                return parse_running(self.virsh.run_line(READ_LINE))
            except VirshError as exc:
                if "doesn't support option" not in exc.message:
                    raise
                log.warning("virsh cannot list domain ids (%s): a domain restarted between two cycles "
                            "is taken for the same run", exc.message)
                self.with_ids = False
        return parse_running(self.virsh.run_line(READ_LINE_NO_ID), with_ids=False)
