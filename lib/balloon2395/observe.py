"""Observing: one virsh read of every running domain per cycle, plus facts read once per domain.

`domstats --balloon --list-running` gives all domains in one process (with
their uuids and ids: lifetime.py). Only when that command is missing (old
libvirt) does it fall back to `list` + `dommemstat` per domain. Per-domain
set-up (dumpxml, switching the stats period on, the maximum in fallback mode)
happens once per domain lifetime, which ends when the domain leaves the running
list or is listed under a new (uuid, id): started again. Every call after the
read names the domain by its uuid (lifetime.py says why); a domain the read
gives no single uuid for is observed, never called.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Dict, List, Optional, Set, TypeVar

from . import PROG
from .lifetime import Lifetime, RunningRead, RunningReader, parse_running
from .logs.lines import about
from .observation import Observation
from .virsh.commands import VirshCommands, VirshError
from .virsh.domain_xml import DomainFacts, parse_domain_xml
from .virsh.output import BalloonStats, VirshOutputError

log = logging.getLogger(PROG)
T = TypeVar("T")


@dataclass
class _Known:
    """Per-domain-lifetime cache."""

    facts: Optional[DomainFacts] = None
    maximum_kib: Optional[int] = None
    stats_requested_at: Optional[float] = None  # when we switched the stats period on
    stats_seen: bool = False  # usable reported since we last switched it on
    lifetime: Optional[Lifetime] = None  # (uuid, id) of this run


class Collector:
    def __init__(self, virsh: VirshCommands, stats_period_s: int,
                 wants_stats: Callable[[str, DomainFacts], bool] = lambda name, facts: True,
                 setup: bool = True, clock: Callable[[], float] = time.time) -> None:
        """`wants_stats` says whether a domain may be changed at all (excluded and Windows
        domains get no stats period); `setup=False` never changes a domain (status view, dry run)."""
        self.virsh, self.stats_period_s = virsh, stats_period_s
        self.wants_stats, self.setup, self.clock = wants_stats, setup, clock
        self.fallback = False
        self._known: Dict[str, _Known] = {}
        self._running = RunningReader(virsh)
        self.restarted: Set[str] = set()  # names started again since the last cycle
        self.described: Set[str] = set()  # names whose facts the last collect read: once per lifetime
        self.read_at = 0.0  # when the last read completed: its figures are not newer than this

    def collect(self) -> List[Observation]:
        """Raises VirshError when the running domains cannot be read at all."""
        self.described = set()
        read = self._read_all()
        self.read_at = self.clock()
        known = {s.name: self._carried(s.name, read.lifetimes.get(s.name)) for s in read.stats}
        self.restarted = {name for name, k in known.items() if self._known.get(name) not in (None, k)}
        self._known = known
        return [self._observe(stats, self._known[stats.name], read) for stats in read.stats]

    def lifetime(self, name: str) -> Optional[Lifetime]:
        """(uuid, domain id) of the run the last collect read of this domain, if known."""
        known = self._known.get(name)
        return None if known is None else known.lifetime

    def _carried(self, name: str, lifetime: Optional[Lifetime]) -> _Known:
        """The cache of a domain's current run: kept while its (uuid, id) stays or is not listed."""
        known = self._known.get(name)
        if known is None or lifetime is not None and known.lifetime not in (None, lifetime):
            return _Known(lifetime=lifetime)
        known.lifetime = lifetime or known.lifetime
        return known

    def _read_all(self) -> RunningRead:
        if not self.fallback:
            try:
                return self._parsed(self._running.read)
            except VirshError as exc:
                if not exc.unsupported:
                    raise
                log.warning("virsh domstats unavailable (%s): reading each domain with dommemstat", exc.message,
                            extra=about("read-fallback"))
                self.fallback = True
        listed = self._parsed(lambda: parse_running(
            "\n" + self.virsh.run("list", "--uuid", "--name", "--state-running"), with_ids=False))
        out = []
        for name, (uuid, _) in listed.lifetimes.items():
            try:
                out.append(replace(self._parsed(partial(self.virsh.dommemstat, uuid)), name=name))
            except VirshError as exc:
                if not exc.domain_gone:
                    log.warning("%s: dommemstat failed: %s", name, exc.message, extra=about("domain-read-failed", name))
        return RunningRead(out, listed.lifetimes, listed.conflicts)

    @staticmethod
    def _parsed(read: Callable[[], T]) -> T:
        try:
            return read()
        except VirshOutputError as exc:
            raise VirshError([], 0, f"unparseable virsh output: {exc}") from None

    def _observe(self, stats: BalloonStats, known: _Known, read: RunningRead) -> Observation:
        name = stats.name
        problem = read.conflicts.get(name) or stats.problem
        uuid = None if problem or name not in read.lifetimes else read.lifetimes[name][0]
        if uuid is None:  # nothing to call it by this cycle
            return Observation(stats, known.facts, known.stats_requested_at, None, problem)
        if known.facts is None:
            try:
                known.facts = parse_domain_xml(self.virsh.dumpxml(uuid))
            except (VirshError, ValueError) as exc:
                log.warning("%s: cannot read domain XML: %s", name, exc, extra=about("domain-read-failed", name))
                return Observation(stats, None, None, uuid)
            self.described.add(name)
        if stats.maximum_kib is None and self.fallback:
            if known.maximum_kib is None:
                try:
                    known.maximum_kib = self.virsh.max_memory_kib(uuid)
                except (VirshError, VirshOutputError) as exc:
                    log.warning("%s: cannot read maximum memory: %s", name, exc,
                                extra=about("domain-read-failed", name))
            stats = replace(stats, maximum_kib=known.maximum_kib)
        # A guest without a period still shows the figures of its one report from boot,
        # frozen; a guest without usable has never reported. Either way: switch it on, once.
        needs_period = stats.usable_kib is None or known.facts.stats_period_s is None
        if stats.usable_kib is not None and known.stats_requested_at is not None:
            known.stats_seen = True
        if needs_period and self.setup and self.wants_stats(name, known.facts) and (
                known.stats_requested_at is None or known.stats_seen):
            known.stats_requested_at, known.stats_seen = self.clock(), False
            try:
                self.virsh.enable_stats(uuid, self.stats_period_s)
                known.facts = replace(known.facts, stats_period_s=self.stats_period_s)
                log.info("%s: no fresh usable figure: stats period set to %ds", name, self.stats_period_s,
                         extra=about("stats-period", name))
            except VirshError as exc:
                log.warning("%s: cannot set the stats period: %s", name, exc.message,
                            extra=about("stats-period-failed", name))
        return Observation(stats, known.facts, known.stats_requested_at, uuid)
