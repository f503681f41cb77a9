"""`doctor`: what on this host and in each running guest keeps ballooning from working, and what to change.

The checks are one pure function, `diagnose`, from the facts read (`Reading`: the running domains'
balloon figures, their domain XML, the host's memory, KSM, the lock directory) to `Finding`s; `read`
gathers those facts and changes nothing: no setmem, no stats period switched on, no lock taken, no
directory created. FAIL is what makes the daemon leave a guest alone or not start at all; WARN is
advice (the daemon works, less well or less safely); a FAIL makes the exit status 1.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

from . import PROG, config as cfg, ksm
from .host import HostReader, is_remote
from .lifetime import RunningReader
from .lock import InstanceLock, LockError, default_dir, dir_problem
from .observation import HostMemory
from .quoted import escaped, json_escaped
from .settings import DomainSettings
from .units import mib_text
from .virsh.commands import VirshCommands, VirshError, VirshTimeout, default_uri
from .virsh.domain_xml import SETTINGS_NS, DomainFacts, parse_domain_xml
from .virsh.output import BalloonStats, VirshOutputError
from .virsh.session import open_virsh

OK, WARN, FAIL = "OK", "WARN", "FAIL"
HOST = "host"


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARN or FAIL
    subject: str  # "host", or a guest's name as virsh gave it (escaped where shown)
    check: str  # which check: stable words a script can key on
    seen: str  # what was found, and what it means
    change: str = ""  # what to change (a command where there is one); empty when nothing


@dataclass(frozen=True)
class Guest:
    """One running domain as read: its figures, its XML's facts (or why there are none), and the
    settings the config gives it."""

    stats: BalloonStats
    settings: DomainSettings
    uuid: Optional[str] = None  # None: the read named it by no single uuid
    facts: Optional[DomainFacts] = None
    problem: Optional[str] = None  # what the read contradicts itself on for it (lifetime.RunningRead)
    xml_error: str = ""  # why `facts` is None although it has a uuid: dumpxml's error


@dataclass(frozen=True)
class Host:
    remote: bool
    memory: Optional[HostMemory]  # None: not read (see memory_source)
    memory_source: str  # where it is read from: local, cgroup, virsh, or off
    ksm_running: bool
    ksm_line: str  # ksm.check's line: what KSM's state means ("" when ksm: ignore)
    lock_dir: str
    lock_dir_problem: Optional[str]  # why the daemon could not take its lock there, or None


@dataclass(frozen=True)
class Reading:
    """Everything the checks look at, for one connection."""

    uri: str
    connect: Optional[str]  # the -c the commands shown carry (None: virsh's default, as the daemon's)
    host: Host
    guests: Tuple[Guest, ...] = ()
    virsh_error: Optional[str] = None  # the running domains could not be read at all
    virsh_timed_out: bool = False
    now: float = 0.0  # when the figures were read
    stale_after_s: float = 5.0
    stats_period_s: int = 1
    ksm_refuse: bool = False  # `ksm: refuse`: a running KSM stops the daemon from starting


# ------------------------------------------------------------------ the checks (pure)

def diagnose(r: Reading) -> List[Finding]:
    findings = [_virsh_reached(r), *_host(r)]
    for guest in r.guests:
        findings.extend(_guest(r, guest))
    return findings


def _virsh_reached(r: Reading) -> Finding:
    if r.virsh_error is None:
        return Finding(OK, HOST, "virsh", f"{r.uri} answers: {len(r.guests)} running domain(s)")
    return Finding(FAIL, HOST, "virsh", f"cannot read the running domains of {r.uri}: {r.virsh_error}",
                   _virsh_fix(r))


def _virsh_fix(r: Reading) -> str:
    text = (r.virsh_error or "").lower()
    if "virsh not found" in text or "cannot run" in text:
        return "install libvirt-clients, or name the binary: --virsh PATH"
    if r.virsh_timed_out:
        return f"libvirtd does not answer: check it ({_virsh(r, 'version')}), or allow more: --timeout S"
    if "connect" in text:
        return "start libvirtd (systemctl start libvirtd), or name the hypervisor: -c URI"
    if "unparseable" in text:
        return f"see what virsh prints: {_virsh(r, 'domstats', '--balloon', '--list-running')}"
    return f"see virsh's own error: {_virsh(r, 'domstats', '--balloon', '--list-running')}"


def _host(r: Reading) -> List[Finding]:
    return [_swap(r.host), _ksm(r), _lock_dir(r.host)]


def _swap(h: Host) -> Finding:
    memory = h.memory
    if memory is None and h.memory_source == "off":
        return Finding(OK, HOST, "swap", "not checked (host_memory: off)")
    if memory is None:
        return Finding(WARN, HOST, "swap", f"host memory cannot be read ({h.memory_source}): the daemon would "
                                           "grow guests without knowing what the host can back",
                       "see the warning before these lines; or name the source: host_memory in the config")
    if memory.swap_free_kib is None:
        return Finding(OK, HOST, "swap", f"not known (host memory read through {h.memory_source})")
    if memory.can_swap:
        return Finding(OK, HOST, "swap", f"{mib_text(memory.swap_free_kib)} free, at least the host reserve "
                                         f"({mib_text(memory.reserve_kib)}): out of RAM the host swaps")
    return Finding(WARN, HOST, "swap", f"{mib_text(memory.swap_free_kib)} free, less than the host reserve "
                                       f"({mib_text(memory.reserve_kib)}): out of RAM the host's OOM killer "
                                       "kills a whole QEMU, so the daemon keeps all of its reserve",
                   "add swap (a swap file or zram) of at least the host reserve")


def _ksm(r: Reading) -> Finding:
    h = r.host
    if not h.ksm_running:
        return Finding(OK, HOST, "ksm", h.ksm_line or "not checked (ksm: ignore)")
    if r.ksm_refuse:
        return Finding(FAIL, HOST, "ksm", "running, and the config says ksm: refuse: the daemon will not start",
                       "stop KSM (echo 2 > /sys/kernel/mm/ksm/run), or set ksm: warn")
    return Finding(WARN, HOST, "ksm", h.ksm_line,
                   "for exact host figures stop KSM (echo 2 > /sys/kernel/mm/ksm/run); where it is wanted, "
                   "ksm: ignore in the config")


def _lock_dir(h: Host) -> Finding:
    if h.lock_dir_problem is None:
        return Finding(OK, HOST, "lock-dir", f"{h.lock_dir}: the daemon can take its lock there")
    return Finding(FAIL, HOST, "lock-dir", h.lock_dir_problem,
                   "give the daemon a directory only its user can write: --lock-dir DIR (lock_dir: in the config)")


def _guest(r: Reading, g: Guest) -> List[Finding]:
    """The checks that leave nothing else to check come first: each ends the guest's checks."""
    ended = _unmanaged(r, g) or _no_balloon(r, g)
    if ended is not None:
        return [ended]
    assert g.facts is not None  # _unmanaged ended the checks of a guest without facts
    findings = _pinned(g.stats.name, g.facts)
    driver = _driver(g.stats)
    findings.append(driver)
    if driver.level != OK:  # the rest is the driver's: it is the one thing to change
        return findings
    return findings + [_period(r, g, g.facts), _maximum(r, g), *_switches(r, g)]


def _unmanaged(r: Reading, g: Guest) -> Optional[Finding]:
    """A guest whose XML is unknown, or that the daemon leaves alone by design."""
    name = g.stats.name
    problem = g.problem or g.stats.problem
    if problem:
        return Finding(FAIL, name, "read", f"not checked: the read contradicts itself: {problem}",
                       "run doctor again; while it stays, the daemon leaves the domain alone")
    if g.uuid is None:
        return Finding(WARN, name, "read", "not checked: not in the read's list of running domains "
                                           "(started or stopped during the read?)", "run doctor again")
    if g.facts is None:
        return Finding(FAIL, name, "domain-xml", f"not checked: {g.xml_error}",
                       f"see it: {_virsh(r, 'dumpxml', '--domain', _domain(name, g.uuid))}")
    if g.settings.exclude:
        return Finding(OK, name, "managed", "excluded by the config: the daemon leaves it alone")
    if g.settings.invalid:
        return Finding(FAIL, name, "managed", f"its settings metadata is not usable: {g.settings.invalid}",
                       f"see it: {_virsh(r, 'metadata', '--domain', _domain(name, g.uuid), '--uri', SETTINGS_NS)}"
                       " and set it again (--key b2395 --set '<settings .../>' --live --config)")
    if g.facts.windows and not g.settings.manage_windows:
        return Finding(OK, name, "managed", f"Windows guest ({g.facts.windows}): the daemon leaves it alone "
                                            "(manage_windows: off)")
    return None


def _no_balloon(r: Reading, g: Guest) -> Optional[Finding]:
    assert g.facts is not None
    model = g.facts.balloon_model
    if model == "virtio":
        return None
    return Finding(FAIL, g.stats.name, "balloon-device",
                   f"no virtio balloon device (memballoon model {model or 'absent'}): it cannot be ballooned",
                   f"{_edit(r, g)}, there <memballoon model='virtio'><stats period='{r.stats_period_s}'/></memballoon>"
                   f" (at its next start), or exclude it: {_exclusion(g.stats.name)}")


def _pinned(name: str, facts: DomainFacts) -> List[Finding]:
    """Guests whose memory the host cannot get back from a balloon: shrinking them only starves them."""
    causes = []
    if facts.passthrough:
        causes.append(("vfio", f"PCI passthrough ({', '.join(facts.passthrough)}): VFIO pins all of its "
                               "memory, so an inflated balloon gives the host nothing"))
    if facts.hugepages:
        causes.append(("hugepages", "backed by hugepages: balloon pages of 4 KiB free no huge page"))
    if facts.locked:
        causes.append(("locked", "memory locked on the host (<memoryBacking><locked/>): an inflated "
                                 "balloon frees nothing"))
    return [Finding(FAIL, name, check, seen, f"exclude it: {_exclusion(name)}") for check, seen in causes]


def _driver(s: BalloonStats) -> Finding:
    name = s.name
    if s.usable_kib is not None and s.last_update:
        return _figures(s)
    if s.available_kib is not None and s.last_update:
        return Finding(FAIL, name, "balloon-driver", "the driver reports no usable memory (MemAvailable): "
                                                     "the daemon never acts on it",
                       "a guest kernel that reports it: Linux 4.6 or later")
    return Finding(FAIL, name, "balloon-driver", "the balloon driver does not answer: no guest memory "
                                                 "figures (last-update 0), setmem does nothing",
                   "load it in the guest and at its boot (Linux: modprobe virtio_balloon; "
                   "Windows: the virtio-win balloon driver and service)")


def _figures(s: BalloonStats) -> Finding:
    """A report whose sizes agree (a usable above the current size is fine: a guest without a stats
    period shows its boot report, from before the balloon inflated)."""
    actual, maximum = s.actual_kib, s.maximum_kib
    if not actual or maximum is not None and actual > maximum:
        return Finding(FAIL, s.name, "balloon-driver",
                       f"sizes that do not agree: current {mib_text(actual)}, maximum {mib_text(maximum)}: "
                       "the daemon leaves it alone", "run doctor again; if it stays, look at the guest's driver")
    return Finding(OK, s.name, "balloon-driver",
                   f"answering: it reported usable {mib_text(s.usable_kib)}; current {mib_text(actual)}")


def _period(r: Reading, g: Guest, facts: DomainFacts) -> Finding:
    name, period, last = g.stats.name, facts.stats_period_s, g.stats.last_update or 0
    set_it = _virsh(r, "dommemstat", "--domain", _domain(name, g.uuid), "--period", str(r.stats_period_s),
                    "--live", "--config")
    if period is None:
        return Finding(WARN, name, "stats-period", "no stats period: its figures are the one report of its boot, "
                                                   "frozen; the daemon sets one live (lost at its restart)",
                       set_it)
    age = r.now - last
    if age > r.stale_after_s or age < -r.stale_after_s:
        state = _virsh(r, "domstate", "--domain", _domain(name, g.uuid))
        return Finding(WARN, name, "stats-period",
                       f"period {period}s, but its last report is {age:.0f}s old: stale, the daemon waits "
                       "for a fresh one",
                       f"check that the guest runs ({state}); setting the period again restarts the reports: {set_it}")
    return Finding(OK, name, "stats-period", f"every {period}s, last report {max(age, 0):.0f}s ago")


def _maximum(r: Reading, g: Guest) -> Finding:
    s = g.stats
    raise_it = _virsh(r, "setmaxmem", "--domain", _domain(s.name, g.uuid), "--size", "SIZE", "--config")
    if s.maximum_kib is not None and s.actual_kib is not None and s.maximum_kib > s.actual_kib:
        return Finding(OK, s.name, "maximum", f"{mib_text(s.maximum_kib)}, above its {mib_text(s.actual_kib)}: "
                                              "room to grow")
    return Finding(WARN, s.name, "maximum",
                   f"current {mib_text(s.actual_kib)} is its maximum {mib_text(s.maximum_kib)}: the daemon can "
                   "shrink it and give that back, never grow it further",
                   f"raise it: {raise_it} (at its next start)")


# The balloon's features: (check, DomainFacts field, <memballoon> attribute, what on means, what off
# means, what turning it on needs besides a restart)
SWITCHES = (
    ("autodeflate", "autodeflate", "autodeflate",
     "on: out of memory, the guest takes pages back from the balloon instead of killing",
     "off: a guest that runs out between two cycles OOM-kills instead of taking pages back from the balloon",
     ""),
    ("free-page-reporting", "free_page_reporting", "freePageReporting",
     "on: pages the guest frees go back to the host without a balloon change",
     "off: memory the guest frees stays taken on the host until the balloon takes it",
     "; guest Linux 5.7 or later"),
)


def _switches(r: Reading, g: Guest) -> List[Finding]:
    return [Finding(OK, g.stats.name, check, on) if getattr(g.facts, field) else
            Finding(WARN, g.stats.name, check, off,
                    f"{_edit(r, g)}, there <memballoon model='virtio' {attribute}='on'> (at its next start{needs})")
            for check, field, attribute, on, off, needs in SWITCHES]


def _edit(r: Reading, g: Guest) -> str:
    return _virsh(r, "edit", "--domain", _domain(g.stats.name, g.uuid))


def _exclusion(name: str) -> str:
    """The config rule that leaves the domain alone, as YAML (a JSON string is a YAML scalar)."""
    return f"domains: {{{json.dumps(name)}: {{exclude: true}}}} in the config"


def _domain(name: str, uuid: Optional[str]) -> str:
    """How a command shown names the domain: by name, quoted for a shell, where that reaches it; by uuid
    where a shell line cannot hold the name (control characters) or virsh would take it for an id."""
    if uuid is not None and (not name.isprintable() or name.isdigit()):
        return uuid
    return shlex.quote(name)


def _virsh(r: Reading, *words: str) -> str:
    connect = ("-c", shlex.quote(r.connect)) if r.connect else ()
    return " ".join(("virsh", *connect, *words))


# ------------------------------------------------------------------ reading (changes nothing)

def read(config: cfg.Config, uri: str) -> Reading:
    config = config.for_uri(uri)
    virsh = open_virsh(config)
    try:
        host = _read_host(config, uri, virsh)
        base = Reading(uri, config.connect, host, stale_after_s=config.stale_after_s,
                       stats_period_s=config.stats_period, ksm_refuse=config.ksm == "refuse")
        try:
            running = RunningReader(virsh).read()
        except (VirshError, VirshOutputError) as exc:
            message = getattr(exc, "message", None) or f"unparseable virsh output: {exc}"
            return replace(base, virsh_error=message, virsh_timed_out=isinstance(exc, VirshTimeout))
        now = time.time()
        guests = []
        for stats in running.stats:
            problem = running.conflicts.get(stats.name) or stats.problem
            lifetime = None if problem else running.lifetimes.get(stats.name)
            guest = Guest(stats, config.for_domain(stats.name), lifetime and lifetime[0], problem=problem)
            guests.append(guest if guest.uuid is None else _described(config, virsh, guest))
        return replace(base, guests=tuple(guests), now=now)
    finally:
        virsh.close()


def _described(config: cfg.Config, virsh: VirshCommands, guest: Guest) -> Guest:
    """The guest with its XML's facts and the settings they give it, or with why it has none."""
    assert guest.uuid is not None
    try:
        facts = parse_domain_xml(virsh.dumpxml(guest.uuid))
    except VirshError as exc:
        return replace(guest, xml_error=f"dumpxml failed: {exc.message}")
    except ValueError as exc:
        return replace(guest, xml_error=str(exc))
    return replace(guest, facts=facts, settings=config.for_domain(guest.stats.name, facts.settings))


def _read_host(config: cfg.Config, uri: str, virsh: VirshCommands) -> Host:
    reader = HostReader(config, virsh, uri)
    remote = is_remote(uri)
    said = ksm.check("ignore" if config.ksm == "ignore" else "warn", remote)
    line = said.line.removeprefix("ksm: ")  # the finding says which check it is
    directory, problem = _lock_dir_state(config, uri)
    return Host(remote, reader.read(), reader.source, said.running, line, directory, problem)


def _lock_dir_state(config: cfg.Config, uri: str) -> Tuple[str, Optional[str]]:
    """The lock directory and why the daemon could not lock there; one not there yet must be one the
    daemon can create."""
    try:
        directory = InstanceLock(uri, config.connection.lock_dir or default_dir()).directory
    except LockError as exc:
        return config.connection.lock_dir or "-", str(exc)
    if os.path.lexists(directory):
        return directory, dir_problem(directory)
    parent = os.path.dirname(directory)
    if not os.access(parent, os.W_OK | os.X_OK):
        return directory, f"lock directory {directory} does not exist and {parent} is not writable to create it"
    return directory, None


# ------------------------------------------------------------------ output

def render_text(findings: Sequence[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(escaped(f"{f.level:<4}  {f.subject}: {f.check}: {f.seen}"))
        if f.change:
            lines.append(escaped(f"      change: {f.change}"))
    return "\n".join(lines)


def summary(findings: Sequence[Finding]) -> str:
    counts = {level: sum(f.level == level for f in findings) for level in (FAIL, WARN, OK)}
    return ", ".join(f"{n} {level}" for level, n in counts.items())


def render_json(readings: Sequence[Tuple[str, Sequence[Finding]]]) -> str:
    return json_escaped(json.dumps([{"uri": uri, "findings": [asdict(f) for f in findings]}
                                    for uri, findings in readings], indent=2, ensure_ascii=False))


def doctor(config: cfg.Config, as_json: bool, reader: Callable[[cfg.Config, str], Reading] = read) -> int:
    """0 when nothing FAILs, 1 when something does."""
    uris = config.connection.uris or (default_uri(),)
    readings = [(uri, diagnose(reader(config, uri))) for uri in uris]
    if as_json:
        print(render_json(readings))
    else:
        headed = len(readings) > 1
        print("\n\n".join((escaped(uri) + ":\n" if headed else "") + render_text(findings)
                          for uri, findings in readings))
        print(f"{PROG} doctor: {summary([f for _, found in readings for f in found])}")
    return 1 if any(f.level == FAIL for _, found in readings for f in found) else 0
