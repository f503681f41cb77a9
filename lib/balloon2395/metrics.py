"""Prometheus metrics (prometheus-client, an optional dependency): a node_exporter textfile,
written atomically after every cycle, and/or an HTTP endpoint on loopback.

Every series has a `host` label (the hypervisor's host: the machine's name for a
local URI), so one daemon serving several URIs, or a fleet of daemons, reads
the same way in Prometheus. Figures are in bytes and seconds, as Prometheus
conventions ask; per-domain series follow the last cycle, so a domain that
stops running leaves no stale series behind.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from typing import Dict, Iterator, Optional, Tuple
from urllib.parse import urlsplit

from .config import Config
from .daemon import APPLIED, OUTCOMES, Cycle
from .policy import CHANGES, SKIP, cap_kib
from .safefiles import write_atomic
from .virsh import VirshError

try:
    # not write_to_textfile: its temp file has a predictable name, a place to plant a symlink
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    AVAILABLE = True
except ImportError:  # the daemon runs without it; asking for metrics then is a config error
    AVAILABLE = False

NS = "balloon2395"
MISSING = ("metrics need the optional prometheus-client package: ./install.sh --metrics "
           "(or pip install -r requirements-metrics.txt)")


def host_label(uri: str) -> str:
    """qemu+ssh://host2/system -> host2; a local URI -> this machine's name."""
    return urlsplit(uri).hostname or socket.gethostname()


class _Host:
    """What one connection's daemon has reported so far."""

    def __init__(self) -> None:
        self.cycle: Optional[Cycle] = None
        self.secs: Optional[float] = None  # the interval in force: a reload (SIGHUP) may change it
        self.changes: Counter = Counter()  # (direction, outcome) -> changing decisions
        self.virsh_errors: Counter = Counter()  # command -> failed calls


class Metrics:
    """Collected on demand from each host's last cycle (the HTTP thread scrapes while daemons run)."""

    def __init__(self, config: Config) -> None:
        if not AVAILABLE:
            raise RuntimeError(MISSING)
        self.textfile, self._lock = config.metrics_textfile, threading.Lock()
        self._hosts: Dict[str, _Host] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._server = None
        if config.metrics_port is not None:
            started = start_http_server(config.metrics_port, config.metrics_address, self.registry)
            # 0.16 (Debian 12's) returns None, not (server, thread): its server thread ends with the process
            self._server = started[0] if started else None

    def add_host(self, label: str) -> None:
        with self._lock:
            self._hosts.setdefault(label, _Host())

    def cycle_done(self, label: str, cycle: Optional[Cycle], secs: float) -> None:
        """After each cycle (`secs`: the interval in force): count what became of its changes, keep
        its figures, write the textfile."""
        with self._lock:
            host = self._hosts[label]
            host.secs = secs
            if cycle is not None and cycle is not host.cycle:
                host.cycle = cycle
                host.changes.update((d.action, cycle.outcomes[d.name]) for d in cycle.decisions if d.changes)
        if self.textfile:
            write_atomic(self.textfile, generate_latest(self.registry), 0o644)

    def virsh_error(self, label: str, command: str) -> None:
        with self._lock:
            self._hosts[label].virsh_errors[command] += 1

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def collect(self) -> Iterator:
        with self._lock:
            hosts = {label: (h.cycle, h.secs, dict(h.changes), dict(h.virsh_errors))
                     for label, h in self._hosts.items()}
        families = _Families()
        for label, (cycle, secs, changes, failed) in sorted(hosts.items()):
            families.add_counts(label, changes, failed)
            if secs is not None:
                families.interval.add_metric([label], secs)
            if cycle is not None:
                families.add_cycle(label, cycle)
        yield from families.all()


class _Families:
    """The metric families of one scrape, filled host by host."""

    def __init__(self) -> None:
        self.per_domain = {field: GaugeMetricFamily(f"{NS}_domain_{field}_bytes", help_text, labels=["host", "domain"])
                           for field, help_text in (
                               ("actual", "the guest's current size (balloon.current)"),
                               ("usable", "memory the guest can use without swapping (MemAvailable)"),
                               ("target", "the size the last cycle's setmem moved the guest to "
                                          "(only when one succeeded)"),
                               ("maximum", "the most the guest may grow to (its maximum, or a configured cap)"),
                               ("headroom", "the usable memory its settings ask for (headroom)"))}
        self.adjustments = CounterMetricFamily(f"{NS}_adjustments", "setmem calls that succeeded, by direction",
                                               labels=["host", "direction"])
        self.outcomes = CounterMetricFamily(f"{NS}_changes", "changing decisions by what became of them: applied, "
                                            "failed, timed-out (may have landed), gone, fenced, dry-run",
                                            labels=["host", "direction", "outcome"])
        self.skipped = GaugeMetricFamily(f"{NS}_domains_skipped", "domains left alone in the last cycle, by reason",
                                         labels=["host", "reason"])
        self.errors = CounterMetricFamily(f"{NS}_virsh_errors", "virsh calls that failed or timed out, by command",
                                          labels=["host", "command"])
        self.duration = GaugeMetricFamily(f"{NS}_cycle_duration_seconds", "how long the last cycle took",
                                          labels=["host"])
        self.last = GaugeMetricFamily(f"{NS}_last_cycle_timestamp_seconds", "when the last cycle that could read "
                                      "the domains ran (alert when it falls behind)", labels=["host"])
        self.interval = GaugeMetricFamily(f"{NS}_cycle_interval_seconds", "the configured seconds between cycles "
                                          "(secs)", labels=["host"])
        self.available = GaugeMetricFamily(f"{NS}_host_available_bytes", "the host's available memory",
                                           labels=["host"])
        self.reserve = GaugeMetricFamily(f"{NS}_host_reserve_bytes", "what the host keeps for itself "
                                         "(host_reserve): growth never takes it below", labels=["host"])

    def add_counts(self, label: str, changes: Dict[Tuple[str, str], int], failed: Dict[str, int]) -> None:
        """What became of the host's changes, and its failed virsh calls, since the daemon started."""
        for direction in CHANGES:
            self.adjustments.add_metric([label, direction], changes.get((direction, APPLIED), 0))
            for outcome in OUTCOMES:
                self.outcomes.add_metric([label, direction, outcome], changes.get((direction, outcome), 0))
        for command, count in sorted(failed.items()):
            self.errors.add_metric([label, command], count)

    def add_cycle(self, label: str, cycle: Cycle) -> None:
        """The figures of the host's last cycle."""
        self.duration.add_metric([label], cycle.duration_s)
        self.last.add_metric([label], cycle.at)
        if cycle.host is not None:
            self.available.add_metric([label], cycle.host.available_kib * 1024)
            self.reserve.add_metric([label], cycle.host.reserve_kib * 1024)
        for reason, count in sorted(Counter(d.code for d in cycle.decisions if d.action == SKIP).items()):
            self.skipped.add_metric([label, reason], count)
        for obs, decision in zip(cycle.observations, cycle.decisions):
            s, settings = obs.stats, cycle.settings[obs.name]
            applied = cycle.outcomes.get(obs.name) == APPLIED
            for field, kib in (("actual", s.actual_kib), ("usable", s.usable_kib),
                               ("target", decision.target_kib if applied else None),
                               ("maximum", cap_kib(s, settings)), ("headroom", settings.headroom_kib)):
                if kib is not None:
                    self.per_domain[field].add_metric([label, obs.name], kib * 1024)

    def all(self) -> Iterator:
        yield from self.per_domain.values()
        yield from (self.adjustments, self.outcomes, self.skipped, self.errors, self.duration, self.last,
                    self.interval, self.available, self.reserve)


class CountingVirsh:
    """A virsh that tells the metrics of each failed call; everything else passes through."""

    def __init__(self, virsh, count) -> None:
        self._virsh, self._count = virsh, count

    def __getattr__(self, name: str):
        attr = getattr(self._virsh, name)
        if not callable(attr) or name.startswith("_") or name == "close":
            return attr

        def counted(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except VirshError as exc:
                self._count(_command(exc.argv) or name)
                raise
        return counted


def _command(argv) -> str:
    """The virsh command a failed call ran: `setmem` of `-c URI setmem --domain ...`."""
    args = list(argv[2:] if argv[:1] == ["-c"] else argv)
    return args[0].split()[0] if args and args[0].strip() else ""


