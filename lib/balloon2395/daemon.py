"""One pass is observe -> decide -> act; the loop repeats it every `secs`.

The daemon owns what must survive between cycles (each domain's History and
what was last said about it) and the acting: setmem and the log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from . import PROG
from .config import Config
from .decide.cycle import decide_all
from .decide.history import History
from .decide.records import HOLD, SKIP, WAIT, Decision, Limits
from .decide.tuning import TUNING
from .host import HostReader
from .journal import ChangeJournal, Sizes
from .logs.lines import about, autodeflate_note, change_line, debug_block
from .observation import HostMemory, Observation
from .observe import Collector
from .settings import DomainSettings
from .virsh.commands import VirshCommands, VirshError, VirshTimeout, default_uri
from .virsh.domain_xml import DomainFacts

log = logging.getLogger(PROG)

# What became of a changing decision: only APPLIED changed the guest for sure; TIMED_OUT may have.
APPLIED, FAILED, TIMED_OUT, GONE, FENCED, DRY_RUN = "applied", "failed", "timed-out", "gone", "fenced", "dry-run"
OUTCOMES = (APPLIED, FAILED, TIMED_OUT, GONE, FENCED, DRY_RUN)
# Holds worth telling an operator about once; the rest are routine.
_NOTABLE_HOLDS = ("at-maximum", "at-floor", "refused", "host-reserve")
# While the running domains cannot be read (libvirtd restarting), the wait between tries doubles up
# to this: a daemon that is down for minutes is not hammered every `secs`.
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class Cycle:
    """What one pass saw and decided: for metrics, the state file and `explain`."""

    at: float
    observations: List[Observation]
    settings: Dict[str, DomainSettings]
    decisions: List[Decision]
    host: Optional[HostMemory]
    duration_s: float
    outcomes: Dict[str, str] = field(default_factory=dict)  # name -> OUTCOMES, for this cycle's changes
    last_changes: Dict[str, "LastChange"] = field(default_factory=dict)  # name -> its latest, of any cycle


@dataclass(frozen=True)
class LastChange:
    """The latest change decided for a domain and what became of it, kept while the domain runs:
    `status` and `explain` show it after the cycles that only waited for it to land."""

    at: float
    action: str
    from_kib: Optional[int]
    target_kib: Optional[int]
    outcome: str


@dataclass(frozen=True)
class _Change:
    """What acting on a changing decision needs. The policy changes only a domain that the read gave
    one uuid and fresh stats, and always says from what to what."""

    uuid: str
    last_update: int
    from_kib: int
    target_kib: int

    @classmethod
    def of(cls, obs: Observation, decision: Decision) -> _Change:
        uuid, last_update = obs.uuid, obs.stats.last_update
        from_kib, target_kib = decision.actual_kib, decision.target_kib
        if uuid is None or last_update is None or from_kib is None or target_kib is None:
            raise ValueError(f"{decision.action} {decision.name}: a change without a uuid, stats time or sizes")
        return cls(uuid, last_update, from_kib, target_kib)


ABSENT_SIZES = 256


@dataclass
class _DomainState:
    history: History = field(default_factory=History)
    noted: Optional[Tuple[str, str]] = None  # (action, code) last logged, so each is said once
    last_change: Optional[LastChange] = None


class Daemon:
    def __init__(self, config: Config, virsh: VirshCommands, clock: Callable[[], float] = time.time,
                 journal: Optional[ChangeJournal] = None, host_files: Optional[Callable[[str], str]] = None) -> None:
        """`host_files` reads the host's /proc files in place of this machine's (the simulated host's)."""
        self.config, self.virsh, self.clock, self.host_files = config, virsh, clock, host_files
        self.collector = Collector(virsh, config.stats_period, wants_stats=self._managed, setup=not config.dry_run,
                                   clock=clock)
        self.host = self._host_reader(config)
        self.states: Dict[str, _DomainState] = {}
        self.host_recent: Tuple[int, ...] = ()  # the host's available memory at the last reads, oldest first
        self.outage_since: Optional[float] = None
        self.retry_s = 0.0  # wait before the next try during an outage; 0 when virsh answers
        # uuid -> when we last changed it. Unlike a state it outlives a domain missing from one read
        # (a cut output, a short pause), whose history is forgotten: without it the domain would be
        # changed again on the figures the first change was made on. Kept for stale_after_s, after
        # which such figures are stale anyway. The journal keeps it across a restart.
        self.journal = journal
        self.changed_at: Dict[str, float] = journal.load(clock(), config.stale_after_s) if journal else {}
        # uuid -> the run (domain id) and the sizes idle_shrink needed keeps of it (found, largest): a new
        # instance takes them up for a domain still in that run, as the journal kept them
        self.sizes: Dict[str, Sizes] = journal.load_sizes() if journal else {}
        self.last: Optional[Cycle] = None  # the last pass that could read the domains
        # (name, metadata) -> settings of the running domains: rules and metadata change per
        # config or domain lifetime, not per cycle, and metadata is parsed as YAML
        self._settings: Dict[Tuple[str, tuple], DomainSettings] = {}

    def _managed(self, name: str, facts: DomainFacts) -> bool:
        """Whether the daemon may change this domain at all: what its decision would skip for
        (exclusion by config or by its own metadata, Windows) never gets a stats period either."""
        settings = self.config.for_domain(name, facts.settings)
        return not settings.exclude and not settings.invalid and (not facts.windows or settings.manage_windows)

    def _advise(self, obs: Observation) -> None:
        """Once per domain lifetime, when its facts are first read: a guest the daemon may shrink has a
        process killed when it runs out of memory, unless its balloon has autodeflate. A dry run tells too:
        it is how an operator checks a host before the daemon changes anything."""
        facts = obs.facts
        if obs.name in self.collector.described and facts is not None and obs.uuid is not None \
                and facts.balloon_model == "virtio" and not facts.autodeflate and self._managed(obs.name, facts):
            log.info("%s", autodeflate_note(obs.name, obs.uuid, self.config.connect),
                     extra=about("no-autodeflate", obs.name))

    def read_and_decide(self, histories: Optional[Mapping[str, History]] = None) -> Cycle:
        """One read of the domains and the host and what a cycle decides on it, acting on nothing: `cycle`
        acts on it, the views (status, explain, --watch) show it. `histories`: what to remember of the
        domains instead of this daemon's own (a view's, from the running daemon's state file).
        Raises VirshError when the running domains cannot be read."""
        started = time.monotonic()
        observations = self.collector.collect()
        # Figures are judged against the end of the read: a slow read must not make them look future-dated.
        now = self.collector.read_at
        for name in self.collector.restarted:  # started again since the last cycle: no history
            self.states.pop(name, None)
        if histories is None:
            histories = {name: state.history for name, state in self.states.items()}
            histories.update(self._remembered(observations, histories))
        settings = self._settings_of(observations)
        host = self.host.read()
        if host is not None:
            self.host_recent = (self.host_recent + (host.available_kib,))[-TUNING.recent_reports:]
        decisions = decide_all(observations, settings, histories, host, now,
                               Limits(stale_after_s=self.config.stale_after_s), self.config.policy, self.host_recent)
        return Cycle(now, observations, settings, decisions, host, time.monotonic() - started)

    def _run_of(self, obs: Observation) -> Optional[int]:
        """The domain id of the run this observation is of; None when the read ties it to none."""
        lifetime = self.collector.lifetime(obs.name)
        return lifetime[1] if lifetime is not None and obs.uuid is not None and lifetime[0] == obs.uuid else None

    def _remembered(self, observations: List[Observation], known: Mapping[str, History]) -> Dict[str, History]:
        """A domain this instance has no history of yet, in the run the journal kept sizes of: those sizes."""
        out = {}
        for obs in observations:
            run = self._run_of(obs)
            sizes = self.sizes.get(obs.uuid) if run is not None and obs.uuid is not None else None
            if obs.name not in known and sizes is not None and sizes.domain_id == run:
                out[obs.name] = History(found_kib=sizes.found_kib, peak_kib=sizes.peak_kib)
        return out

    def _keep_sizes(self, observations: List[Observation], states: Mapping[str, _DomainState]) -> None:
        """The sizes of the domains read, and of those a read missed (they come back to them), the latest
        ABSENT_SIZES of those: a domain that is gone for good must not grow the journal forever."""
        sizes: Dict[str, Sizes] = {}
        for obs in observations:
            run, history = self._run_of(obs), states[obs.name].history
            if run is not None and obs.uuid is not None and history.found_kib is not None:
                sizes[obs.uuid] = Sizes(run, history.found_kib, max(history.peak_kib or 0, history.found_kib))
        absent = [(uuid, entry) for uuid, entry in self.sizes.items() if uuid not in sizes]
        sizes = {**dict(absent[-ABSENT_SIZES:]), **sizes}
        if sizes != self.sizes:
            self.sizes = sizes
            if self.journal is not None:
                self.journal.save(self.changed_at, self.sizes)

    def cycle(self) -> Optional[List[Decision]]:
        """One pass; None when the running domains could not be read."""
        started = time.monotonic()
        try:
            read = self.read_and_decide()
        except VirshError as exc:
            self._outage(exc, self.clock())
            return None
        now, observations = read.at, read.observations
        if self.outage_since is not None:
            log.info("virsh answers again after %.0fs", now - self.outage_since, extra=about("read-back"))
            self.outage_since, self.retry_s = None, 0.0
        for obs in observations:
            self._advise(obs)
        self.changed_at = {n: t for n, t in self.changed_at.items() if now - t <= self.config.stale_after_s}
        states = {obs.name: self.states.get(obs.name) or _DomainState() for obs in observations}
        outcomes = {}
        for obs, decision in zip(observations, read.decisions):
            state = states[obs.name]
            state.history = decision.history
            if self.config.log.debug:
                log.debug("%s", debug_block(obs, read.settings[obs.name], decision, now),
                          extra=about("debug", obs.name, decision.code))
            if decision.changes:
                outcomes[obs.name] = self._act(obs, decision, state)
                state.last_change = LastChange(now, decision.action, decision.actual_kib, decision.target_kib,
                                               outcomes[obs.name])
            else:
                self._note(decision, state)
        self.states = states  # domains that left the running list are forgotten
        self._keep_sizes(observations, states)
        last_changes = {name: s.last_change for name, s in states.items() if s.last_change is not None}
        self.last = replace(read, duration_s=time.monotonic() - started, outcomes=outcomes, last_changes=last_changes)
        return read.decisions

    def _settings_of(self, observations: List[Observation]) -> Dict[str, DomainSettings]:
        known, self._settings = self._settings, {}
        for obs in observations:
            key = (obs.name, obs.facts.settings if obs.facts else ())
            self._settings[key] = known.get(key) or self.config.for_domain(*key)
        return {name: value for (name, _), value in self._settings.items()}

    def _act(self, obs: Observation, decision: Decision, state: _DomainState) -> str:
        if self.config.dry_run:
            self._say(state, (decision.action, decision.code), logging.INFO, "dry-run: " + change_line(decision),
                      about("dry-run", decision.name, decision.code))
            return DRY_RUN
        change = _Change.of(obs, decision)
        if change.last_update <= self.changed_at.get(change.uuid, -1.0):
            self._say(state, (WAIT, "fenced"), logging.INFO,
                      f"wait {obs.name}: changed before a restart or while missing from a read; "
                      "waiting for stats newer than that change", about("fenced", obs.name, decision.code))
            return FENCED
        return self._setmem(change, decision, state)

    def _setmem(self, change: _Change, decision: Decision, state: _DomainState) -> str:
        # Written before the change: killed right after it, the next instance still waits for fresh figures.
        self.changed_at[change.uuid] = self.clock()
        if self.journal is not None:
            self.journal.save(self.changed_at, self.sizes)
        try:
            self.virsh.setmem(change.uuid, change.target_kib)
        except VirshTimeout as exc:
            # It may still land: wait for fresh stats as if it had.
            self._changed(change, state)
            log.warning("%s (%s)", change_line(decision), exc.message,
                        extra=about("setmem-timed-out", decision.name, decision.code))
            return TIMED_OUT
        except VirshError as exc:
            if exc.domain_gone:
                log.info("%s: gone before setmem (%s)", decision.name, exc.message,
                         extra=about("gone", decision.name, decision.code))
                return GONE
            self._say(state, ("error", "setmem"), logging.ERROR,
                      f"{change_line(decision)}: setmem failed: {exc.message}",
                      about("setmem-failed", decision.name, decision.code))
            return FAILED
        self._changed(change, state)
        state.noted = None
        log.info("%s", change_line(decision), extra=about(decision.action, decision.name, decision.code))
        return APPLIED

    def _changed(self, change: _Change, state: _DomainState) -> None:
        state.history = state.history.after_change(self.clock(), change.from_kib, change.target_kib)

    def _note(self, decision: Decision, state: _DomainState) -> None:
        if decision.action == SKIP:
            self._say(state, (SKIP, decision.code), logging.INFO, f"skip {decision.name}: {decision.reason}",
                      about(SKIP, decision.name, decision.code))
        elif decision.action == HOLD and decision.code in _NOTABLE_HOLDS:
            self._say(state, (HOLD, decision.code), logging.INFO, f"hold {decision.name}: {decision.reason}",
                      about(HOLD, decision.name, decision.code))
        else:
            state.noted = (decision.action, decision.code)

    @staticmethod
    def _say(state: _DomainState, key: Tuple[str, str], level: int, message: str, extra: Dict[str, str]) -> None:
        if state.noted != key:
            state.noted = key
            log.log(level, "%s", message, extra=extra)

    def _outage(self, exc: VirshError, now: float) -> None:
        self.retry_s = min(RETRY_MAX_S, max(self.config.secs, 2 * self.retry_s))
        if self.outage_since is None:
            self.outage_since = now
            log.error("cannot read running domains: %s (retrying, waits doubling up to %gs)", exc.message,
                      max(RETRY_MAX_S, self.config.secs), extra=about("read-failed"))

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP), between cycles; what is known of the domains stays."""
        self.config = config
        self._settings = {}
        self.collector.stats_period_s = config.stats_period
        self.collector.setup = not config.dry_run
        self.host = self._host_reader(config)

    def _host_reader(self, config: Config) -> HostReader:
        uri = config.connect or default_uri()
        if self.host_files is None:
            return HostReader(config, self.virsh, uri)
        return HostReader(config, self.virsh, uri, read=self.host_files)

    def run(self, stop: threading.Event, before: Callable[[], None] = lambda: None,
            after: Callable[[], None] = lambda: None) -> None:
        """Cycle every `secs` until `stop` is set; a cycle is never cut short. `before` and
        `after` run around each cycle (a config reload, metrics), never inside one."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                before()
                self.cycle()
                after()
            except Exception:  # a bug must cost one cycle, not the guests' daemon
                log.exception("cycle failed; continuing", extra=about("cycle-failed"))
            stop.wait(max(0.0, max(self.config.secs, self.retry_s) - (time.monotonic() - started)))
