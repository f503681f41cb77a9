"""One pass is observe -> decide -> act; the loop repeats it every `secs`.

The daemon owns what must survive between cycles (each domain's History and
what was last said about it) and the acting: setmem and the log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from . import PROG
from .config import Config
from .domain_xml import DomainFacts
from .host import HostReader
from .logs import change_line, debug_block
from .observe import Collector
from .policy import HOLD, SKIP, Decision, History, Limits, decide_all
from .virsh import Virsh, VirshError, VirshTimeout, default_uri

log = logging.getLogger(PROG)

# Holds worth telling an operator about once; the rest are routine.
_NOTABLE_HOLDS = ("at-maximum", "at-floor", "refused", "host-reserve")


@dataclass
class _DomainState:
    history: History = field(default_factory=History)
    noted: Optional[Tuple[str, str]] = None  # (action, code) last logged, so each is said once


class Daemon:
    def __init__(self, config: Config, virsh: Virsh, clock: Callable[[], float] = time.time) -> None:
        self.config, self.virsh, self.clock = config, virsh, clock
        self.collector = Collector(virsh, config.stats_period, wants_stats=self._managed, clock=clock)
        self.host = HostReader(config, virsh, config.connect or default_uri())
        self.states: Dict[str, _DomainState] = {}
        self.outage_since: Optional[float] = None

    def _managed(self, name: str, facts: DomainFacts) -> bool:
        settings = self.config.for_domain(name)
        return not settings.exclude and (not facts.windows or settings.manage_windows)

    def cycle(self) -> Optional[List[Decision]]:
        """One pass; None when the running domains could not be read."""
        now = self.clock()
        try:
            observations = self.collector.collect()
        except VirshError as exc:
            self._outage(exc, now)
            return None
        if self.outage_since is not None:
            log.info("virsh answers again after %.0fs", now - self.outage_since)
            self.outage_since = None
        for name in self.collector.restarted:  # started again since the last cycle: no history
            self.states.pop(name, None)
        limits = Limits(stale_after_s=self.config.stale_after_s)
        states = {obs.name: self.states.get(obs.name) or _DomainState() for obs in observations}
        settings = {obs.name: self.config.for_domain(obs.name, obs.facts.settings if obs.facts else ())
                    for obs in observations}
        decisions = decide_all(observations, settings, {n: s.history for n, s in states.items()},
                               self.host.read(), now, limits, self.config.policy)
        for obs, decision in zip(observations, decisions):
            state = states[obs.name]
            state.history = decision.history
            if self.config.debug:
                log.debug("%s", debug_block(obs, settings[obs.name], decision, now))
            if decision.changes and not self.config.dry_run:
                self._setmem(decision, state)
            else:
                self._note(decision, state)
        self.states = states  # domains that left the running list are forgotten
        return decisions

    def _setmem(self, decision: Decision, state: _DomainState) -> None:
        try:
            self.virsh.setmem(decision.name, decision.target_kib)
        except VirshTimeout as exc:
            # It may still land: wait for fresh stats as if it had.
            state.history = state.history.after_change(self.clock(), decision.actual_kib, decision.target_kib)
            log.warning("%s (%s)", change_line(decision), exc.message)
            return
        except VirshError as exc:
            if exc.domain_gone:
                log.info("%s: gone before setmem (%s)", decision.name, exc.message)
            else:
                self._say(state, ("error", "setmem"), logging.ERROR,
                          f"{change_line(decision)}: setmem failed: {exc.message}")
            return
        state.history = state.history.after_change(self.clock(), decision.actual_kib, decision.target_kib)
        state.noted = None
        log.info("%s", change_line(decision))

    def _note(self, decision: Decision, state: _DomainState) -> None:
        if decision.changes:  # dry run
            self._say(state, (decision.action, decision.code), logging.INFO, "dry-run: " + change_line(decision))
        elif decision.action == SKIP:
            self._say(state, (SKIP, decision.code), logging.INFO, f"skip {decision.name}: {decision.reason}")
        elif decision.action == HOLD and decision.code in _NOTABLE_HOLDS:
            self._say(state, (HOLD, decision.code), logging.INFO, f"hold {decision.name}: {decision.reason}")
        else:
            state.noted = (decision.action, decision.code)

    @staticmethod
    def _say(state: _DomainState, key: Tuple[str, str], level: int, message: str) -> None:
        if state.noted != key:
            state.noted = key
            log.log(level, "%s", message)

    def _outage(self, exc: VirshError, now: float) -> None:
        if self.outage_since is None:
            self.outage_since = now
            log.error("cannot read running domains: %s (retrying every %gs)", exc.message, self.config.secs)

    def run(self, stop: threading.Event) -> None:
        """Cycle every `secs` until `stop` is set; a cycle is never cut short."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.cycle()
            except Exception:  # a bug must cost one cycle, not the guests' daemon
                log.exception("cycle failed; continuing")
            stop.wait(max(0.0, self.config.secs - (time.monotonic() - started)))
