"""Faults injected into a virsh, and a checker of the safety invariants around the daemon's virsh.

Both wrap a virsh (usually an InProcessVirsh: the fake host or the simulator)
and are virshes themselves, so the daemon runs its own code through them:

    Daemon(config, CheckedVirsh(FaultyVirsh(SimVirsh(host), rng), config, clock), clock)

FaultyVirsh makes some calls hang (VirshTimeout, as the real runner raises
it), fail as libvirt fails, print garbage, truncated or doctored figures, or
find libvirtd gone for a while. CheckedVirsh, outermost, sees exactly what the
daemon sees and records every setmem with the observation it came from; a
setmem that breaks a safety rule is a violation.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Callable, Dict, List, Optional, Set

from balloon2395.config import Config
from balloon2395.decide.tuning import TUNING
from balloon2395.lifetime import READ_LINE, parse_running
from balloon2395.settings import DomainSettings
from balloon2395.virsh.commands import VirshCommands, VirshError, VirshTimeout
from balloon2395.virsh.output import BalloonStats, VirshOutputError

# What libvirt says when libvirtd is not there (virsh 9.0, captured).
DAEMON_DOWN = ("error: failed to connect to the hypervisor\n"
               "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Connection refused\n")
_FIGURE = re.compile(r"^(  balloon\.(current|maximum|usable|last-update)=)(\d+)$", re.M)
_BLOCK = re.compile(r"^Domain: '[^\n]*'\n(?:  [^\n]*\n)*", re.M)
_LIST_LINE = re.compile(r"^([0-9a-f-]{36}) [0-9]+ ([^\n]+)$", re.M)
_HEADER = re.compile(r"^Domain: '([^\n]*)'$", re.M)


class _Wrapped(VirshCommands):
    """A virsh whose every command goes to another."""

    def __init__(self, inner: VirshCommands) -> None:
        self.inner = inner

    def close(self) -> None:
        self.inner.close()

    def run(self, *args: str) -> str:
        return self.inner.run(*args)

    def run_line(self, line: str) -> str:
        return self.inner.run_line(line)


class FaultyVirsh(_Wrapped):
    """Each call fails at `rate` (seeded), in one of FAULTS' ways; `outage()` makes libvirtd go away
    for some calls. `tried` counts the faults by kind."""

    FAULTS = ("hang", "error", "garbage", "truncated", "future", "backwards", "usable>actual", "actual=0",
              "actual>maximum", "maximum=0", "block-twice", "figure-twice", "uuid-twice", "vanished", "no-effect")

    def __init__(self, inner: VirshCommands, rng: random.Random, rate: float = 0.0) -> None:
        super().__init__(inner)
        self.rng, self.rate = rng, rate
        self.down_calls = 0  # calls still to fail with DAEMON_DOWN
        self.tried: Counter = Counter()

    def outage(self, calls: int) -> None:
        self.down_calls = calls
        self.tried["outage"] += 1

    def run(self, *args: str) -> str:
        return self._faulted(args[0], lambda: self.inner.run(*args), args)

    def run_line(self, line: str) -> str:
        return self._faulted(line, lambda: self.inner.run_line(line), (line,))

    def _faulted(self, command: str, call: Callable[[], str], argv) -> str:
        if self.down_calls:
            self.down_calls -= 1
            raise VirshError(list(argv), 1, "; ".join(DAEMON_DOWN.strip().splitlines()))
        if self.rng.random() >= self.rate:
            return call()
        kind = self.rng.choice(self.FAULTS)
        self.tried[kind] += 1
        if kind == "hang":
            raise VirshTimeout(list(argv), None, f"virsh {command} timed out")
        if kind == "error":
            raise VirshError(list(argv), 1, "error: internal error: client socket is closed")
        if command == "setmem":
            if kind == "vanished":  # shut off or migrated away since the read
                raise VirshError(list(argv), 1, f"error: failed to get domain '{argv[2]}'")
            if kind == "no-effect":  # accepted; the balloon never moves
                return "\n"
            return call()
        out = call()
        if kind == "garbage":
            return "".join(self.rng.choice("Domain: '=balloon.current0123456789\n -x") for _ in range(200))
        if kind == "truncated":
            return out[:self.rng.randrange(len(out))] if out else out
        return self._doctored(kind, out)

    def _doctored(self, kind: str, out: str) -> str:
        """One domain's figures made wrong in a way a parser cannot see, only the safety rules."""
        if kind in ("block-twice", "figure-twice", "uuid-twice"):
            return self._repeated(kind, out)
        if kind == "actual>maximum":
            return self._oversized(out)
        figures = list(_FIGURE.finditer(out))
        wanted = {"future": "last-update", "backwards": "last-update", "usable>actual": "usable",
                  "actual=0": "current", "maximum=0": "maximum"}.get(kind)
        figures = [m for m in figures if m.group(2) == wanted]
        if not figures:
            return out
        m = self.rng.choice(figures)
        value = int(m.group(3))
        new = {"future": value + 3600, "backwards": max(0, value - 3600), "usable>actual": value * 50,
               "actual=0": 0, "maximum=0": 0}[kind]
        return out[:m.start(3)] + str(new) + out[m.end(3):]

    def _oversized(self, out: str) -> str:
        """A guest reported larger than its maximum, its usable share kept: a policy that believed
        it would shrink it toward a size still above the maximum."""
        blocks = [m for m in _BLOCK.finditer(out) if "balloon.usable=" in m.group(0)]
        if not blocks:
            return out
        m = self.rng.choice(blocks)
        figures = dict(re.findall(r"balloon\.(current|maximum|usable)=(\d+)", m.group(0)))
        current, maximum = int(figures["current"]), int(figures["maximum"])
        bigger = max(current, maximum) + maximum // 4 + 1
        block = re.sub(r"balloon\.current=\d+", f"balloon.current={bigger}", m.group(0))
        block = re.sub(r"balloon\.usable=\d+", f"balloon.usable={int(figures['usable']) * bigger // max(current, 1)}",
                       block)
        return out[:m.start()] + block + out[m.end():]

    def _repeated(self, kind: str, out: str) -> str:
        """A read that gives one domain twice: its block again with other figures, a figure again
        under its other key, or its uuid again on another domain's list line."""
        if kind == "uuid-twice":
            listed = list(_LIST_LINE.finditer(out))
            if len(listed) < 2:
                return out
            a, b = self.rng.sample(listed, 2)
            return out[:b.start(1)] + a.group(1) + out[b.end(1):]
        blocks = list(_BLOCK.finditer(out))
        if not blocks:
            return out
        m = self.rng.choice(blocks)
        block = m.group(0)
        if kind == "block-twice":
            copy = re.sub(r"(balloon\.current=)(\d+)", lambda c: c.group(1) + str(int(c.group(2)) // 2), block)
            return out[:m.end()] + "\n" + copy + out[m.end():]
        extra = re.sub(r"^  balloon\.current=(\d+)$", lambda c: f"  balloon.actual={int(c.group(1)) * 2}",
                       block, flags=re.M)
        lines = [line for line in extra.splitlines(True) if line.startswith("  balloon.actual=")]
        return out[:m.end()] + "".join(lines) + out[m.end():] if lines else out


class CheckedVirsh(_Wrapped):
    """Records what the daemon read and checks each setmem against it (see the module doc).

    A setmem is unsafe when: it names the domain other than by the uuid the last good
    read listed for it (a name can be another domain's id), the domain was not in that
    read (the read failed, or printed garbage) or the read gave it twice, its figures
    were missing, stale, future-dated or inconsistent (usable > actual, actual 0 or
    above the maximum, maximum 0, a figure given twice), it shrinks below the floor,
    its size is above the maximum (or configured cap) whichever way it moves, it is
    the domain's second in one cycle, or the figures are not newer than the domain's
    last change."""

    def __init__(self, inner: VirshCommands, config: Config, clock: Callable[[], float]) -> None:
        super().__init__(inner)
        self.config, self.clock = config, clock
        self.seen: Dict[str, BalloonStats] = {}  # uuid -> the figures of the domain listed under it
        self.conflicts: Set[str] = set()  # uuids the last read gave twice or to two names
        self.changed_at: Dict[str, float] = {}
        self.this_cycle: Set[str] = set()
        self.reads = self.setmems = 0
        self.violations: List[str] = []

    def run_line(self, line: str) -> str:
        if line != READ_LINE:
            return self.inner.run_line(line)
        self._read_starts()
        out = self.inner.run_line(line)
        try:
            read = parse_running(out)
        except VirshOutputError:
            return out
        # Its own reading of the list and the block headers, not the daemon's: a domain given
        # twice must be seen here even if the daemon's parser let it through.
        by_name = {s.name: s for s in read.stats}
        listed = _LIST_LINE.findall(out)
        blocks = Counter(_HEADER.findall(out))
        uuids, names = Counter(u for u, _ in listed), Counter(n for _, n in listed)
        self.seen = {uuid: by_name[name] for uuid, name in listed if name in by_name}
        self.conflicts = {uuid for uuid, name in listed if uuids[uuid] > 1 or names[name] > 1 or blocks[name] > 1}
        return out

    def run(self, *args: str) -> str:
        if args[0] == "setmem":
            return self._setmem(args[2], int(args[4]), args)
        return self.inner.run(*args)

    def _read_starts(self) -> None:
        self.reads += 1
        self.seen, self.conflicts, self.this_cycle = {}, set(), set()

    def _setmem(self, domain: str, kib: int, args) -> str:
        now = self.clock()
        self.setmems += 1
        for problem in self._problems(domain, kib, now):
            self.violations.append(f"setmem {domain} {kib} KiB at {now:.1f}: {problem}")
        self.this_cycle.add(domain)
        try:
            out = self.inner.run(*args)
        except VirshTimeout:
            self.changed_at[domain] = now  # it may have landed
            raise
        self.changed_at[domain] = now
        return out

    def _problems(self, domain: str, kib: int, now: float) -> List[str]:
        s = self.seen.get(domain)
        if s is None:
            return ["not addressed by a uuid of the last good read"]
        if domain in self.conflicts:
            return ["the last read gave this domain twice"]
        if s.actual_kib is None or s.usable_kib is None or s.last_update is None or s.maximum_kib is None:
            return [f"figures missing: {s}"]
        settings = self.config.for_domain(s.name)
        problems = ["excluded domain"] if settings.exclude else []
        problems += _inconsistent(s.actual_kib, s.usable_kib, s.maximum_kib, s.problem)
        problems += _untimely(s.last_update, now, self.config.stale_after_s)
        problems += _out_of_bounds(kib, s.actual_kib, s.maximum_kib, settings)
        return problems + self._out_of_turn(domain, s.last_update)

    def _out_of_turn(self, domain: str, stamp: int) -> List[str]:
        """A second setmem in one cycle, or one on figures not newer than the last change."""
        problems = ["second setmem in one cycle"] if domain in self.this_cycle else []
        last: Optional[float] = self.changed_at.get(domain)
        if last is not None and stamp <= last:
            problems.append(f"figures (stamped {stamp}) not newer than the last change at {last:.1f}")
        return problems


def _inconsistent(actual: int, usable: int, maximum: int, problem: Optional[str]) -> List[str]:
    if actual <= 0 or usable > actual or maximum <= 0 or actual > maximum or problem:
        return [f"inconsistent figures: actual {actual}, usable {usable}, maximum {maximum}, "
                f"{problem or 'each figure once'}"]
    return []


def _untimely(stamp: int, now: float, stale_after_s: float) -> List[str]:
    problems: List[str] = []
    if now - stamp > stale_after_s:
        problems.append(f"stale figures ({now - stamp:.0f}s old)")
    if stamp > now + TUNING.future_tolerance_s:
        problems.append(f"future-dated figures ({stamp - now:.0f}s ahead)")
    return problems


def _out_of_bounds(kib: int, actual: int, maximum: int, settings: DomainSettings) -> List[str]:
    problems: List[str] = []
    if kib < actual and kib < settings.floor_kib:
        problems.append(f"shrink below the floor {settings.floor_kib}")
    cap = min(maximum, settings.maximum_kib or maximum)
    if kib > cap:
        problems.append(f"size above the maximum {cap}")
    return problems
