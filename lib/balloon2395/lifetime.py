"""Which run of a domain the daemon is looking at: its (uuid, id), read with the balloon figures.

A domain destroyed and started again between two cycles keeps its name, but
libvirt gives every start a new id. So the one virsh process of a cycle runs

    domstats --balloon --list-running ; list --uuid --id --name --state-running

and what the daemon keeps per domain lifetime (facts from dumpxml, whether it
switched the stats period on, its history of changes) starts afresh when the
(uuid, id) under a name changes. `domstats --cpu-total` looked like a cheaper
sign (a new QEMU process counts its CPU time from 0), but it counts the new
guest's boot and can already be above the old value
(fixtures domstats-cpu-total-domain.before-restart / .after-restart).
"""

from __future__ import annotations

import logging
import re
from typing import Dict, List, Tuple

from . import PROG
from .virsh import Virsh, VirshError
from .virsh_output import BalloonStats, VirshOutputError, parse_domstats

log = logging.getLogger(PROG)

Lifetime = Tuple[str, int]  # (uuid, domain id)
READ_LINE = "domstats --balloon --list-running ; list --uuid --id --name --state-running"
# `UUID ID NAME` after a newline (the list follows domstats' output), the name raw to the end of the
# line. No domstats line starts like one: they start with "Domain: '" or a blank.
_ID_LINE = re.compile(r"\n([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) (\d+) ([^\n]+)")


def parse_running(text: str) -> Tuple[List[BalloonStats], Dict[str, Lifetime]]:
    """The output of READ_LINE: every running domain's balloon figures, and its (uuid, id) by name."""
    if text and not text.endswith("\n"):
        # virsh ends every command's output with a newline: without it the text was cut, perhaps
        # inside a number, which would still parse.
        raise VirshOutputError(f"output cut short: ends with {text[-40:]!r}")
    # Where the list starts, found by one search in C (1500 lines of domstats at 100 guests).
    first = _ID_LINE.search(text)
    end = first.start() + 1 if first else len(text)
    lifetimes = {name: (uuid, int(domain_id)) for uuid, domain_id, name in _ID_LINE.findall(text, end - 1)}
    return parse_domstats(text[:end]), lifetimes


class RunningReader:
    """One virsh process a cycle for the balloon figures and the lifetimes. A virsh whose `list`
    has no --id still gives the figures; restarts between two cycles then go unnoticed."""

    def __init__(self, virsh: Virsh) -> None:
        self.virsh = virsh
        self.with_ids = True

    def read(self) -> Tuple[List[BalloonStats], Dict[str, Lifetime]]:
        if self.with_ids:
            try:
                return parse_running(self.virsh.run_line(READ_LINE))
            except VirshError as exc:
                if "doesn't support option" not in exc.message:
                    raise
                log.warning("virsh cannot list domain ids (%s): a domain restarted between two cycles "
                            "is taken for the same run", exc.message)
                self.with_ids = False
        return self.virsh.domstats_balloon(), {}
