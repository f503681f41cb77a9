"""The daemon as a host service: the connections it serves, signals, config reload, metrics.

One process serves every URI of `connect:`, each through its own Daemon, lock,
virsh and thread, so a slow remote host never delays the others' cycles.
Signal handlers only set flags (no locks in a handler); the main thread acts on
them: SIGTERM/SIGINT let every daemon finish its current cycle and stop (with
--once too; while starting, before any cycle, they stop it before the first),
SIGHUP reloads the config (same file, same flags) and hands each daemon the new
one to take before its next cycle. A bad new file is one ERROR line and the
old config stays.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional

from . import PROG, config as cfg, ksm, sdnotify
from .daemon import Daemon
from .host import is_remote
from .journal import ChangeJournal, path_for as journal_path
from .lock import AlreadyRunning, InstanceLock, LockError, default_dir
from .logs import lines as logs
from .quoted import escaped
from .safefiles import unsafe_dir
from .views import statefile
from .virsh.commands import VirshCommands, default_uri
from .virsh.session import open_virsh

log = logging.getLogger(PROG)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_RUNNING = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C in a one-shot view or check: the shell's 128 + SIGINT
# Taken once at start: a reload cannot move a lock, a connection or a listening socket.
# the groups of settings set up once at start (the connections, their locks, the metrics endpoint): a
# reload keeps their running values
RESTART_ONLY = ("connection", "metrics")
RESTART_ONLY_KEYS = tuple(s.key for s in cfg.SETTINGS if s.field.split(".")[0] in RESTART_ONLY)
POLL_S = 0.2  # how soon the main thread notices a signal's flag


class Failed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Connection:
    uri: str
    label: str
    virsh: VirshCommands
    daemon: Daemon
    state_path: str
    pending: Optional[cfg.Config] = None  # a reloaded config, taken before the next cycle
    publish_error: Optional[str] = None  # the last metrics/state file write problem, said once


@dataclass
class _Signals:
    stop: bool = False
    reload: bool = False


class Service:
    def __init__(self, config: cfg.Config, path: Optional[str], flags: Mapping[str, Any],
                 notifier: Optional[sdnotify.Notifier] = None) -> None:
        self.config, self.path, self.flags = config, path, dict(flags)
        self.notifier = notifier or sdnotify.Notifier({}, unset=False)  # systemd's; by default none
        self.beats: Dict[str, float] = {}  # a connection's last cycle start or end: its loop turns
        self.uris = config.connection.uris or (default_uri(),)
        self.metrics = None
        self.locks: List[InstanceLock] = []
        self.connections: List[Connection] = []
        self.signals = _Signals()

    def start(self) -> None:
        """Logs, every lock, KSM, metrics, all before any virsh call; raises Failed."""
        textfile = self.config.metrics.textfile
        problem = textfile and unsafe_dir(os.path.dirname(os.path.abspath(textfile)))
        if problem:
            raise Failed(f"cannot write metrics to {textfile}: {problem}", EXIT_USAGE)
        self._logs(self.config)
        locks = [self._lock(uri) for uri in self.uris]
        try:
            said = ksm.check(self.config.ksm, remote=all(is_remote(uri) for uri in self.uris))
        except ksm.KsmRefused as exc:
            raise Failed(str(exc), EXIT_FAIL) from None
        if said.line:
            (log.warning if said.running else log.info)("%s", said.line)
        if self.config.metrics.textfile or self.config.metrics.port is not None:
            self.metrics = _open_metrics(self.config)
        for uri, lock in zip(self.uris, locks):
            self.connections.append(self._connect(uri, lock))

    def _lock(self, uri: str) -> InstanceLock:
        try:
            lock = InstanceLock(uri, self.config.connection.lock_dir or default_dir())
            lock.acquire()
        except AlreadyRunning as exc:
            raise Failed(str(exc), EXIT_RUNNING) from None
        except LockError as exc:
            raise Failed(str(exc), EXIT_FAIL) from None
        self.locks.append(lock)
        return lock

    def _connect(self, uri: str, lock: InstanceLock) -> Connection:
        from .metrics import CountingVirsh
        config = self.config.for_uri(uri)
        label = uri  # the metrics' name for the connection: its series get `uri` and `host` labels
        virsh = open_virsh(config)
        counted = virsh
        if self.metrics is not None:
            self.metrics.add_host(label)
            counted = CountingVirsh(virsh, lambda command: self.metrics.virsh_error(label, command))
        daemon = Daemon(config, counted, journal=ChangeJournal(journal_path(lock.path)))
        return Connection(uri, label, virsh, daemon, statefile.path_for(lock))

    def _logs(self, config: cfg.Config) -> None:
        problem = config.log.logdir and unsafe_dir(config.log.logdir)
        if problem:
            raise Failed(f"cannot log in {config.log.logdir}: {problem}", EXIT_USAGE)
        try:
            logs.setup(config.log.logdir, config.log.debug, fmt=config.log.format, per_uri=len(self.uris) > 1)
        except OSError as exc:
            raise Failed(f"cannot open log in {config.log.logdir}: {exc.strerror}", EXIT_FAIL) from None

    def close(self) -> None:
        for conn in self.connections:
            statefile.remove(conn.state_path)
            conn.virsh.close()
        for lock in self.locks:
            lock.release()
        if self.metrics is not None:
            self.metrics.close()

    # ------------------------------------------------------------ the loop

    def catch_signals(self) -> None:
        """From here on a signal only sets a flag: no KeyboardInterrupt can cut a cycle, a start or a close."""
        def on_stop(*_):
            self.signals.stop = True

        def on_hup(*_):
            self.signals.reload = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def once(self) -> int:
        failed = []

        def cycle(conn: Connection) -> None:
            try:
                if conn.daemon.cycle() is None:
                    failed.append(conn.uri)
                self._after(conn)
            except Exception:  # a bug in the one cycle asked for: say so, and the exit status says it too
                log.exception("cycle of %s failed", conn.uri, extra=logs.about("cycle-failed"))
                failed.append(conn.uri)

        for at, conn in enumerate(self.connections):  # one after the other, each in a thread named for its URI
            if self.signals.stop:  # as the loop: the cycle under way was finished, no other starts
                log.info("stopped before the cycle of %s", ", ".join(c.uri for c in self.connections[at:]),
                         extra=logs.about("stop"))
                break
            thread = threading.Thread(target=cycle, args=(conn,), name=conn.uri)
            thread.start()
            thread.join()
        return EXIT_FAIL if failed else EXIT_OK

    def run(self) -> int:
        c = self.config
        log.info("started for %s: band %g-%g%%, every %gs%s", ", ".join(self.uris), c.defaults.minimal,
                 c.defaults.maximal, c.secs, " (dry run)" if c.dry_run else "", extra=logs.about("start"))
        stop = threading.Event()
        self.beats = {conn.uri: time.monotonic() for conn in self.connections}
        threads = [threading.Thread(target=conn.daemon.run, name=conn.uri,
                                    args=(stop, lambda conn=conn: self._beat(conn, self._before),
                                          lambda conn=conn: self._beat(conn, self._after)))
                   for conn in self.connections]
        for thread in threads:
            thread.start()
        self.notifier.ready()  # locks held, logs and every connection open: systemctl start returns
        while not self.signals.stop:
            time.sleep(POLL_S)
            if self.signals.reload:
                self.signals.reload = False
                self.notifier.reloading()
                try:
                    self.reload()
                except Exception:  # a bug in a reload must not end the thread that takes SIGTERM
                    log.exception("reload failed, keeping the running config", extra=logs.about("reload-failed"))
                self.notifier.ready()
            if self.notifier.watchdog_s is not None and self._turning(threads):
                self.notifier.watchdog()  # none while a loop is stuck: systemd restarts us after WatchdogSec
        self.notifier.stopping()
        stop.set()  # each daemon ends its current cycle: a setmem is never cut in half
        for thread in threads:
            thread.join()
        log.info("stopped", extra=logs.about("stop"))
        return EXIT_OK

    def _beat(self, conn: Connection, then: Callable[[Connection], None]) -> None:
        self.beats[conn.uri] = time.monotonic()
        then(conn)

    def _turning(self, threads: List[threading.Thread]) -> bool:
        """Whether every connection's loop still turns: its thread lives and began or ended a cycle within
        the watchdog's interval plus its wait between cycles (a cycle far longer than the interval is stuck)."""
        now, interval = time.monotonic(), self.notifier.watchdog_s or 0.0
        return all(thread.is_alive() and now - self.beats.get(conn.uri, now)
                   <= interval + max(conn.daemon.config.secs, conn.daemon.retry_s)
                   for thread, conn in zip(threads, self.connections))

    @staticmethod
    def _before(conn: Connection) -> None:
        pending, conn.pending = conn.pending, None
        if pending is not None:
            conn.daemon.reconfigure(pending)

    def _after(self, conn: Connection) -> None:
        """Publish the cycle: metrics, state file, each on its own. A file that cannot be written
        is said once (again when that changes), not every cycle, and never costs a cycle."""
        cycle = conn.daemon.last
        problems = []
        if self.metrics is not None:
            config = conn.daemon.config
            problems.append(_written(lambda: self.metrics.cycle_done(conn.label, cycle, config.secs, config.policy)))
        if cycle is not None:
            problems.append(_written(lambda: statefile.write(conn.state_path, conn.uri, cycle)))
        problem = "; ".join(p for p in problems if p) or None
        if problem and problem != conn.publish_error:
            log.warning("%s (metrics or status --watch may be out of date)", problem)
        conn.publish_error = problem

    # ------------------------------------------------------------ SIGHUP

    def reload(self) -> None:
        path = self.path or cfg.default_path()
        try:
            new = cfg.load(path, self.flags)
        except cfg.ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc, extra=logs.about("reload-failed"))
            return
        kept = [s.key for s in cfg.SETTINGS
                if s.key in RESTART_ONLY_KEYS and s.value_in(new) != s.value_in(self.config)]
        if kept:
            log.warning("reload: %s cannot change without a restart; keeping the running value", ", ".join(kept))
            new = replace(new, **{group: getattr(self.config, group) for group in RESTART_ONLY})
        if new.log != self.config.log:
            try:
                self._logs(new)
            except Failed as exc:
                self._logs(self.config)
                log.error("reload failed, keeping the running config: %s", exc, extra=logs.about("reload-failed"))
                return
        self.config = new
        for conn in self.connections:
            conn.pending = new.for_uri(conn.uri)
        log.info("reloaded %s", path or "(no config file: defaults and flags)", extra=logs.about("reload"))


def _written(write: Callable[[], None]) -> Optional[str]:
    try:
        write()
    except OSError as exc:
        return f"cannot write {exc.filename}: {exc.strerror}"
    return None


def _open_metrics(config: cfg.Config):
    from . import metrics
    if not metrics.AVAILABLE:
        raise Failed(metrics.MISSING, EXIT_USAGE)
    try:
        return metrics.Metrics(config)
    except OSError as exc:
        raise Failed(f"cannot serve metrics on {config.metrics.address}:{config.metrics.port}: {exc.strerror}",
                     EXIT_FAIL) from None


def serve(config: cfg.Config, path: Optional[str], flags: Dict[str, Any], once: bool) -> int:
    service = Service(config, path, flags, sdnotify.Notifier())  # out of the environment virsh and ssh get
    service.catch_signals()  # before the lock and virsh: a signal while starting also ends cleanly
    try:
        service.start()
        if service.signals.stop:
            log.info("stopped before the first cycle", extra=logs.about("stop"))
            return EXIT_OK
        return service.once() if once else service.run()
    except Failed as exc:
        print(escaped(f"{PROG}: {exc}"), file=sys.stderr)  # it may quote virsh's stderr
        return exc.code
    finally:
        service.close()
