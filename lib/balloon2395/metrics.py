"""Prometheus metrics (prometheus-client, an optional dependency): a node_exporter textfile,
written atomically after every cycle, and/or an HTTP endpoint on loopback.

Every series has a `host` label (the hypervisor's host: the machine's name for a
local URI) and a `uri` label (the connection URI as given), so one daemon serving
several URIs (qemu:///system and qemu:///session are both on this machine), or a
fleet of daemons, reads the same way in Prometheus. Figures are in bytes and seconds, as Prometheus
conventions ask; per-domain series follow the last cycle, so a domain that
stops running leaves no stale series behind. Every series whose labels are known in
advance (each direction and outcome, each virsh command, each skip reason, the cycle
time's buckets) is there from the first scrape, at 0: rate() and increase() count the
first event too.
"""

from __future__ import annotations

import bisect
import io
import itertools
import math
import platform
import queue
import selectors
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from . import __version__
from .config import Config
from .daemon import APPLIED, OUTCOMES, Cycle
from .decide.eligibility import cap_kib
from .decide.records import CHANGES, SKIP
from .safefiles import write_atomic
from .virsh.commands import VirshError

try:
    # not write_to_textfile: its temp file has a predictable name, a place to plant a symlink
    from prometheus_client import CollectorRegistry, exposition, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString
    # what generate_latest writes (the 0.0.4 text format): CONTENT_TYPE_LATEST says so before 0.21
    CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
    AVAILABLE = True
except ImportError:  # the daemon runs without it; asking for metrics then is a config error
    AVAILABLE = False

NS = "balloon2395"
MISSING = ("metrics need the optional prometheus-client package: ./install.sh --metrics "
           "(or pip install -r requirements-metrics.txt)")
# The cycle time's upper bounds (seconds): a cycle of a few domains on one long-lived virsh takes
# milliseconds, one whose virsh calls time out takes up to the timeout (10 s by default).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What virsh_errors counts by: the first word of each command the daemon runs (VirshCommands' named
# commands, the read line, observe.py's `list` when the read line cannot give ids).
COMMANDS = ("domstats", "list", "dommemstat", "dominfo", "dumpxml", "nodememstats", "setmem")
# The decision codes of a skip (docs/policy.md#decision-codes; tests/test_metrics.py holds this to the
# decide package's): the domains_skipped gauge shows each, 0 in a cycle that skipped none for it.
SKIP_REASONS = ("excluded", "bad-metadata", "inconsistent-read", "windows", "unresponsive", "no-balloon",
                "no-size", "no-maximum", "inconsistent", "above-cap", "no-usable", "no-period", "future-stats",
                "stale-stats")


def host_label(uri: str) -> str:
    """qemu+ssh://host2/system -> host2; a local URI -> this machine's name."""
    try:
        return urlsplit(uri).hostname or socket.gethostname()
    except ValueError:  # a malformed URI (an unclosed [ ...): it is still this daemon's connection
        return socket.gethostname()


def uri_label(uri: str) -> str:
    """The connection URI as given, less a password if it has one; text Prometheus can carry."""
    try:
        parts = urlsplit(uri)
        if parts.password is not None:
            uri = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    except ValueError:
        pass
    return uri.encode("utf-8", "backslashreplace").decode("utf-8")  # a non-UTF-8 byte: \xNN, not a crash


class _Durations:
    """The cycle times so far, counted as the histogram's buckets count them."""

    def __init__(self, counts: Tuple[int, ...] = (0,) * (len(BUCKETS) + 1), total_s: float = 0.0) -> None:
        self.counts, self.total_s = list(counts), total_s  # per bucket (the last one above every bound)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1  # the first bucket whose bound is >= it
        self.total_s += seconds

    def copy(self) -> _Durations:
        return _Durations(tuple(self.counts), self.total_s)

    def buckets(self) -> List[Tuple[str, float]]:
        """(le, cycles at or below it), the last le +Inf: the exposition's cumulative counts."""
        return [(floatToGoString(bound), count)
                for bound, count in zip((*BUCKETS, math.inf), itertools.accumulate(self.counts))]


class _Host:
    """What one connection's daemon has reported so far."""

    def __init__(self, policy: str) -> None:
        self.cycle: Optional[Cycle] = None
        self.secs: Optional[float] = None  # the interval in force: a reload (SIGHUP) may change it
        self.policy = policy  # and the policy
        self.changes: Counter = Counter()  # (direction, outcome) -> changing decisions
        self.virsh_errors: Counter = Counter()  # command -> failed calls
        self.durations = _Durations()

    def copy(self) -> _Host:
        """What a scrape reads, taken under the lock: the daemons go on meanwhile."""
        seen = _Host(self.policy)
        seen.cycle, seen.secs, seen.durations = self.cycle, self.secs, self.durations.copy()
        seen.changes, seen.virsh_errors = Counter(self.changes), Counter(self.virsh_errors)
        return seen


class Metrics:
    """Collected on demand from each host's last cycle (the HTTP thread scrapes while daemons run)."""

    def __init__(self, config: Config) -> None:
        if not AVAILABLE:
            raise RuntimeError(MISSING)
        self.textfile, self._lock = config.metrics.textfile, threading.Lock()
        self.policy = config.policy  # each host's until its first cycle says otherwise
        self._hosts: Dict[str, _Host] = {}  # by connection URI
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._server: Optional[Endpoint] = None
        if config.metrics.port is not None:
            self._server = Endpoint(config.metrics.address, config.metrics.port, self.registry)

    def add_host(self, uri: str) -> None:
        """A connection the daemon serves, named by its URI everywhere below; its series carry
        `uri` and `host` labels."""
        with self._lock:
            self._hosts.setdefault(uri, _Host(self.policy))

    def cycle_done(self, label: str, cycle: Optional[Cycle], secs: float, policy: Optional[str] = None) -> None:
        """After each cycle (`secs`, `policy`: the interval and policy in force): count what became of its
        changes and how long it took, keep its figures, write the textfile."""
        with self._lock:
            host = self._hosts[label]
            host.secs, host.policy = secs, policy or host.policy
            if cycle is not None and cycle is not host.cycle:
                host.cycle = cycle
                host.changes.update((d.action, cycle.outcomes[d.name]) for d in cycle.decisions if d.changes)
                host.durations.observe(cycle.duration_s)
        if self.textfile:
            write_atomic(self.textfile, generate_latest(self.registry), 0o644)

    def virsh_error(self, label: str, command: str) -> None:
        with self._lock:
            self._hosts[label].virsh_errors[command] += 1

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def collect(self) -> Iterator:
        with self._lock:
            hosts = {label: host.copy() for label, host in self._hosts.items()}
        families = _Families()
        for uri, host in sorted(hosts.items()):
            families.add_host([host_label(uri), uri_label(uri)], host)  # two URIs on one host: two series
        yield from families.all()


IDS = ["host", "uri"]  # the labels of every series: which connection it comes from


class _Families:
    """The metric families of one scrape, filled host by host."""

    def __init__(self) -> None:
        self.build = GaugeMetricFamily(f"{NS}_build_info", "always 1: the daemon's version, its Python and the "
                                       "policy in force", labels=[*IDS, "version", "python", "policy"])
        self.per_domain = {field: GaugeMetricFamily(f"{NS}_domain_{field}_bytes", help_text, labels=[*IDS, "domain"])
                           for field, help_text in (
                               ("actual", "the guest's current size (balloon.current)"),
                               ("usable", "memory the guest can use without swapping (MemAvailable)"),
                               ("target", "the size the last cycle's setmem moved the guest to "
                                          "(only when one succeeded)"),
                               ("maximum", "the most the guest may grow to (its maximum, or a configured cap)"),
                               ("headroom", "the usable memory its settings ask for (headroom)"))}
        self.adjustments = CounterMetricFamily(f"{NS}_adjustments", "setmem calls that succeeded, by direction",
                                               labels=[*IDS, "direction"])
        self.outcomes = CounterMetricFamily(f"{NS}_changes", "changing decisions by what became of them: applied, "
                                            "failed, timed-out (may have landed), gone, fenced, dry-run",
                                            labels=[*IDS, "direction", "outcome"])
        self.skipped = GaugeMetricFamily(f"{NS}_domains_skipped", "domains left alone in the last cycle, by reason",
                                         labels=[*IDS, "reason"])
        self.errors = CounterMetricFamily(f"{NS}_virsh_errors", "virsh calls that failed or timed out, by command",
                                          labels=[*IDS, "command"])
        self.duration = HistogramMetricFamily(f"{NS}_cycle_duration_seconds", "how long each cycle that could "
                                              "read the domains took (read, decide, setmem)", labels=IDS)
        self.last = GaugeMetricFamily(f"{NS}_last_cycle_timestamp_seconds", "when the last cycle that could read "
                                      "the domains ran (alert when it falls behind)", labels=IDS)
        self.interval = GaugeMetricFamily(f"{NS}_cycle_interval_seconds", "the configured seconds between cycles "
                                          "(secs)", labels=IDS)
        self.available = GaugeMetricFamily(f"{NS}_host_available_bytes", "the host's available memory",
                                           labels=IDS)
        self.reserve = GaugeMetricFamily(f"{NS}_host_reserve_bytes", "what the host keeps for itself "
                                         "(host_reserve): growth never takes it below", labels=IDS)

    def add_host(self, ids: List[str], host: _Host) -> None:
        self.build.add_metric([*ids, __version__, platform.python_version(), host.policy], 1)
        self.add_counts(ids, host.changes, host.virsh_errors)
        self.duration.add_metric(ids, host.durations.buckets(), host.durations.total_s)
        if host.secs is not None:
            self.interval.add_metric(ids, host.secs)
        if host.cycle is not None:
            self.add_cycle(ids, host.cycle)

    def add_counts(self, ids: List[str], changes: Counter, failed: Counter) -> None:
        """What became of the host's changes, and its failed virsh calls, since the daemon started."""
        for direction in CHANGES:
            self.adjustments.add_metric([*ids, direction], changes[(direction, APPLIED)])
            for outcome in OUTCOMES:
                self.outcomes.add_metric([*ids, direction, outcome], changes[(direction, outcome)])
        for command in sorted(set(COMMANDS) | set(failed)):
            self.errors.add_metric([*ids, command], failed[command])

    def add_cycle(self, ids: List[str], cycle: Cycle) -> None:
        """The figures of the host's last cycle."""
        self.last.add_metric(ids, cycle.at)
        if cycle.host is not None:
            self.available.add_metric(ids, cycle.host.available_kib * 1024)
            self.reserve.add_metric(ids, cycle.host.reserve_kib * 1024)
        skipped = Counter(d.code for d in cycle.decisions if d.action == SKIP)
        for reason in sorted(set(SKIP_REASONS) | set(skipped)):
            self.skipped.add_metric([*ids, reason], skipped[reason])
        for obs, decision in zip(cycle.observations, cycle.decisions):
            s, settings = obs.stats, cycle.settings[obs.name]
            applied = cycle.outcomes.get(obs.name) == APPLIED
            for field, kib in (("actual", s.actual_kib), ("usable", s.usable_kib),
                               ("target", decision.target_kib if applied else None),
                               ("maximum", cap_kib(s, settings)), ("headroom", settings.headroom_kib)):
                if kib is not None:
                    self.per_domain[field].add_metric([*ids, obs.name], kib * 1024)

    def all(self) -> Iterator:
        yield self.build
        yield from self.per_domain.values()
        yield from (self.adjustments, self.outcomes, self.skipped, self.errors, self.duration, self.last,
                    self.interval, self.available, self.reserve)


class Endpoint:
    """GET /metrics over HTTP with a bounded number of threads, whatever the clients do.

    prometheus-client's own server (a ThreadingHTTPServer) gives every connection a thread for as
    long as it stays open: idle connections pin a thread each, without end. Here one thread reads
    every connection's request, without blocking, and drops one that has not sent a whole request
    (at most HEAD bytes) within TIMEOUT seconds; at most PENDING connections are read at once, the
    oldest dropped for a new one beyond that. WORKERS threads answer the whole requests, each
    answer bounded by the socket's timeout; one request per connection, then it is closed.
    """

    WORKERS = 4
    PENDING = 128
    TIMEOUT = 5.0
    HEAD = 8192

    def __init__(self, address: str, port: int, registry) -> None:
        self.registry = registry
        family, kind, proto, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(where)
            self.socket.listen(64)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.port = self.socket.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._answers: queue.Queue = queue.Queue(self.PENDING)
        self._threads = [threading.Thread(target=self._read, name="metrics-http", daemon=True)]
        self._threads += [threading.Thread(target=self._answer, name=f"metrics-http-{i}", daemon=True)
                          for i in range(self.WORKERS)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._threads[0].join(self.TIMEOUT)
        for _ in self._threads[1:]:
            self._answers.put(None)
        for thread in self._threads[1:]:
            thread.join(self.TIMEOUT)
        for sock in (self.socket, self._wake_r, self._wake_w):
            sock.close()

    def _read(self) -> None:
        """Accept connections and read their requests, every one at once; hand whole ones on."""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._reading: Dict[socket.socket, Tuple[float, bytearray]] = {}  # oldest first: deadline, bytes so far
        try:
            while True:
                now = time.monotonic()
                for conn in [c for c, (deadline, _) in self._reading.items() if deadline <= now]:
                    self._drop(conn)
                wait = min((deadline for deadline, _ in self._reading.values()), default=now + 60) - now
                for key, _ in self._selector.select(max(wait, 0.01)):
                    if key.fileobj is self._wake_r:
                        return
                    if key.fileobj is self.socket:
                        self._admit()
                    elif key.fileobj in self._reading:  # else dropped for a newer one in this very round
                        self._receive(key.fileobj)
        finally:
            for conn in list(self._reading):
                self._drop(conn)
            self._selector.close()

    def _admit(self) -> None:
        for conn in self._accept():
            if len(self._reading) >= self.PENDING:
                self._drop(next(iter(self._reading)))
            self._reading[conn] = (time.monotonic() + self.TIMEOUT, bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _receive(self, conn: socket.socket) -> None:
        head = self._reading[conn][1]
        try:
            data = conn.recv(self.HEAD + 1 - len(head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        head += data
        if not data or len(head) > self.HEAD:
            self._drop(conn)  # gone, or more than a scrape's request
        elif b"\r\n\r\n" in head or b"\n\n" in head:
            self._drop(conn, close=False)
            try:
                self._answers.put_nowait((conn, bytes(head)))
            except queue.Full:
                _close(conn)

    def _drop(self, conn: socket.socket, close: bool = True) -> None:
        self._selector.unregister(conn)
        del self._reading[conn]
        if close:
            _close(conn)

    def _accept(self) -> List[socket.socket]:
        accepted: List[socket.socket] = []
        while len(accepted) < self.PENDING:
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # out of file descriptors, a connection reset before accept: later,
                time.sleep(0.05)  # without spinning on a listening socket that stays readable
                break
            conn.setblocking(False)
            accepted.append(conn)
        return accepted

    def _answer(self) -> None:
        while True:
            job = self._answers.get()
            if job is None:
                return
            conn, head = job
            try:
                conn.settimeout(self.TIMEOUT)  # sendall's whole answer, since Python 3.5
                _Handler((conn, head), ("", 0), self)  # type: ignore[arg-type]
            except Exception:  # a client gone mid-answer, or a failed collect: the next scrape says so
                pass
            finally:
                _close(conn)


class _Handler(BaseHTTPRequestHandler):
    """One request, already read whole (its head: the request line and headers)."""

    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive to hold a worker
    server_version = "balloon-2395"
    server: "Endpoint"  # type: ignore[assignment]

    def setup(self) -> None:
        self.connection, head = self.request
        self._answer = io.BytesIO()
        self.rfile, self.wfile = io.BytesIO(head), self._answer

    def finish(self) -> None:
        self.connection.sendall(self._answer.getvalue())  # within the socket's timeout, all of it

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE)
        elif path == "/":
            self._send(200, b"balloon-2395: metrics at /metrics\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: metrics at /metrics\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # a scrape every few seconds is no news; neither is a stranger's request


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


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


