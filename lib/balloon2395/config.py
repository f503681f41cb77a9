"""Configuration: the original's knobs (as YAML keys and flags) plus per-domain rules.

Every value goes through one validator per key, so a file, a flag and a
per-domain rule are checked the same way and a bad one is reported as one
line naming the key.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Dict, Mapping, Optional, Tuple

import yaml

from . import decide
from .lock import canonical_uri
from .quoted import number, shortened, shown
from .safefiles import Refused, read_config
from .settings import DomainSettings
from .units import parse_size_kib, size_text

DEFAULT_CONFIG_PATH = "/etc/balloon-2395/config.yaml"
POLICIES = tuple(decide.POLICIES)
LOG_FORMATS = ("text", "json")
KSM_MODES = ("warn", "refuse", "ignore")
HOST_MEMORY = ("auto", "local", "virsh", "cgroup", "off")
IDLE_SHRINK = ("always", "needed")
DEFAULT_HOST_CGROUP = "/sys/fs/cgroup/machine.slice"  # where systemd and libvirt put the guests' QEMUs
_MAX_SIZE_KIB = 1024 ** 4  # 1 PiB: anything larger is a typo, not a guest


class ConfigError(Exception):
    """One line an operator can act on: where, which key, what is wrong; bounded, whatever the value."""

    def __init__(self, key: str, problem: str, source: str = "", value: str = "") -> None:
        key, problem, value = shortened(key, 80), shortened(problem), shortened(value, 80)
        self.key, self.problem, self.source, self.value = key, problem, source, value
        named = f"{key} {value}" if value else key
        super().__init__(f"{source + ': ' if source else ''}{named}: {problem}")

    def at(self, source: str) -> "ConfigError":
        return ConfigError(self.key, self.problem, source, self.value)

    def as_flag(self) -> "ConfigError":
        """The same error, about the flag that set the key."""
        return ConfigError(_flag(self.key), self.problem, value=self.value)


@dataclass(frozen=True)
class DomainRule:
    pattern: str
    overrides: Tuple[Tuple[str, Any], ...]  # DomainSettings field -> value

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class Connection:
    """How the daemon reaches its hypervisors."""

    uris: Tuple[str, ...] = ()  # `connect`: one URI, or several served by one process (service.py)
    virsh: str = "virsh"
    timeout: float = 10.0
    # One long-lived virsh for all calls (virsh/session.py), not one process per call: bench/cost.py
    # measures 2.7-5.5x less CPU and 2.9-25.6x less wall time per cycle (1 to 500 guests); it falls back by itself.
    session: bool = True
    lock_dir: Optional[str] = None


@dataclass(frozen=True)
class HostWatch:
    """How the host's memory is read and what it keeps."""

    reserve: Optional[Tuple[str, float]] = None  # ("kib", n) or ("pct", n); None: max(10 %, 1 GiB)
    memory: str = "auto"
    cgroup: str = DEFAULT_HOST_CGROUP  # memory cgroup: the memory cgroup whose limit is the host's
    psi: Optional[float] = None  # PSI "some avg10" above which the host counts as short


@dataclass(frozen=True)
class MetricsOutput:
    textfile: Optional[str] = None  # node_exporter textfile collector file
    port: Optional[int] = None
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class LogOutput:
    logdir: Optional[str] = None
    format: str = "text"
    debug: bool = False  # a block per domain per cycle


@dataclass(frozen=True)
class Config:
    defaults: DomainSettings = field(default_factory=DomainSettings)
    rules: Tuple[DomainRule, ...] = ()
    secs: float = 0.5
    stats_period: int = 1
    stale_after: Optional[float] = None
    policy: str = "target"
    dry_run: bool = False
    ksm: str = "warn"  # what to do when KSM runs: say what it means, refuse to start, or nothing
    connection: Connection = field(default_factory=Connection)
    host: HostWatch = field(default_factory=HostWatch)
    metrics: MetricsOutput = field(default_factory=MetricsOutput)
    log: LogOutput = field(default_factory=LogOutput)
    # where the top-level minimal and maximal came from, as a band error says it ("the default", "from --maximal")
    band_from: Tuple[str, str] = field(default=("the default", "the default"), compare=False)

    def for_uri(self, uri: str) -> "Config":
        """The config of one connection. Without `connect`, virsh is run without -c, so that it
        picks its default (LIBVIRT_DEFAULT_URI, libvirt's rules) itself, as an operator's virsh does."""
        return replace(self, connection=replace(self.connection, uris=(uri,))) if self.connection.uris else self

    @property
    def connect(self) -> Optional[str]:
        """The connection of a one-URI config (the only kind a Daemon gets)."""
        return self.connection.uris[0] if self.connection.uris else None

    def for_domain(self, name: str, metadata: Tuple[Tuple[str, str], ...] = ()) -> DomainSettings:
        """An exact-name rule wins over globs; among globs the first in the file wins; the
        domain's own XML metadata wins over both. Bad metadata is reported, never half-applied."""
        exact = [r for r in self.rules if r.pattern == name]
        chosen = exact[0] if exact else next((r for r in self.rules if r.matches(name)), None)
        settings = replace(self.defaults, **dict(chosen.overrides)) if chosen else self.defaults
        if not metadata:
            return settings
        try:
            overrides = dict(_metadata_overrides(metadata))
            merged = replace(settings, **overrides)
            _check_band("metadata ", merged, overrides, self._band_origins(chosen))
            return merged
        except ConfigError as exc:
            return replace(settings, invalid=shortened(str(exc)))

    def _band_origins(self, rule: Optional[DomainRule]) -> Dict[str, str]:
        """Where the band a domain's metadata is checked against came from: its rule, else the top level."""
        if rule is None:
            return dict(zip(_BAND, self.band_from))
        ruled = dict(rule.overrides)
        return {key: f"from domains.{_shown(rule.pattern)}" if key in ruled else said
                for key, said in zip(_BAND, self.band_from)}

    def host_reserve_kib(self, host_total_kib: int) -> int:
        """What the host keeps for itself: growth never takes it below this."""
        if self.host.reserve is None:
            return max(host_total_kib // 10, 1024 * 1024)
        unit, value = self.host.reserve
        return int(value) if unit == "kib" else int(host_total_kib * value / 100)

    @property
    def stale_after_s(self) -> float:
        """Stats older than this are not acted on: a few stats periods, never under 5 s."""
        return self.stale_after if self.stale_after is not None else max(5.0, 3.0 * self.stats_period)


# ---------------------------------------------------------------- validators

def checked_number(value: Any, lo: float, hi: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite, and may be too big for a float
        raise ValueError(f"expected a finite number, got {value}")
    if integer and int(value) != value:
        raise ValueError(f"expected a whole number, got {value}")
    if not lo <= value <= hi:
        raise ValueError(f"must be between {lo:g} and {hi:g}, got {number(value)}")
    return int(value) if integer else float(value)


def _percent(value: Any) -> float:
    return checked_number(value, 0, 100)


def _size(value: Any) -> int:
    kib = parse_size_kib(value)
    if kib > _MAX_SIZE_KIB:
        raise ValueError(f"must be at most 1PiB, got {shown(value)}")
    return kib


def _positive_size(value: Any) -> int:
    kib = _size(value)
    if kib <= 0:
        raise ValueError(f"must be more than 0, got {shown(value)}")
    return kib


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_kind(value)}")
    try:
        value.encode("utf-8")  # a non-UTF-8 argument arrives as surrogate escapes: nothing downstream takes them
    except UnicodeEncodeError:
        raise ValueError("must be UTF-8 text (a byte that is not was given)") from None
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise ValueError(f"must not contain control characters, got {shown(value)}")
    return value


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else _text(value)


def _uris(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    uris = value if isinstance(value, list) else [value]
    if not uris:
        raise ValueError("expected a URI or a list of URIs, got an empty list")
    checked = tuple(_text(uri) for uri in uris)
    for at, uri in enumerate(checked):  # two spellings of one hypervisor: both would shrink its guests
        twin = next((seen for seen in checked[:at] if canonical_uri(seen) == canonical_uri(uri)), None)
        if twin is not None:
            raise ValueError("a URI is listed twice" + ("" if twin == uri else f" ({twin} and {uri}: one hypervisor)"))
    return checked


def _choice(choices: Tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {shown(value)}")
        return value
    return check


def _cgroup_path(value: Any) -> str:
    """A cgroup directory as root will read it: absolute, no `..` or `.` (nor, when read, a symlink)."""
    path = _text(value)
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute path such as {DEFAULT_HOST_CGROUP}, got {shown(path)}")
    if any(part in (".", "..") for part in path.split("/")):
        raise ValueError(f"must not contain . or .. components, got {shown(path)}")
    if any(not c.isprintable() for c in path):
        raise ValueError(f"must not contain control characters, got {shown(path)}")
    return path.rstrip("/") or "/"


def parse_reserve(value: Any) -> Optional[Tuple[str, float]]:
    """A size, or a percentage of the host's memory ("10%")."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"expected a size or a percentage such as 10%, got {shown(value)}") from None
        return "pct", checked_number(pct, 0, 90)
    return "kib", _size(value)


def _shown(key: Any) -> str:
    """A key as an error names it: quoted when empty or holding a newline or other control character,
    so the message stays one line and says which key."""
    text = str(key)
    return text if text and text.isprintable() else repr(text)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {shown(value)}"


@dataclass(frozen=True)
class Setting:
    """One setting, described once: its key in the file (and in rules and metadata, where it may appear
    there), the field it sets, its check, its help; its default is the field's own. The flags, --help,
    check-config, the example config and the docs' table come from these records or are tested against them."""

    key: str
    field: str
    check: Callable[[Any], Any]
    help: str
    where: str = "top"  # "top": the top level only; "both": also rules and metadata; "rule": rules and metadata only
    group: str = "knobs"  # the --help group of its flag; "": no flag
    metavar: Optional[str] = None  # None: a yes/no flag (--x and --no-x), or a choice among `choices`
    flag_type: Optional[Callable[[str], Any]] = None  # what argparse turns the flag's text into before `check`
    choices: Tuple[str, ...] = ()
    default_text: Optional[str] = None  # the default in words, where the field's value does not say it

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def default(self) -> Any:
        return self.value_in(Config())

    def value_in(self, config: "Config") -> Any:
        """Its value in a config: a domain setting's in the defaults, the others' in their group."""
        record: Any = config.defaults if self.where != "top" else config
        for name in self.field.split("."):
            record = getattr(record, name)
        return record

    @property
    def default_shown(self) -> str:
        """The default as an operator would write it in the file."""
        if self.default_text is not None:
            return self.default_text
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if self.field.endswith("_kib"):
            return size_text(value)
        return f"{value:g}" if isinstance(value, float) else str(value)


def _number(lo: float, hi: float, integer: bool = False, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return None if optional and value is None else checked_number(value, lo, hi, integer)
    return check


SETTINGS: Tuple[Setting, ...] = (
    Setting("minimal", "minimal", _percent, "grow below this usable %", "both", metavar="PCT", flag_type=float),
    Setting("maximal", "maximal", _percent, "shrink above this usable %", "both", metavar="PCT", flag_type=float),
    Setting("critical", "floor_kib", _size, "floor: never shrink below it", "both", metavar="SIZE"),
    Setting("addram", "addram_kib", _positive_size,
            "step: grow step; target: the least a grow adds while the guest is paging", "both", metavar="SIZE"),
    Setting("rmram", "rmram_kib", _positive_size, "step: shrink step", "both", metavar="SIZE"),
    Setting("maximum", "maximum_kib", _positive_size, "a cap below the domain's own maximum", "rule", group="",
            default_text="none"),
    Setting("exclude", "exclude", _bool, "leave the domain alone", "both", group=""),
    Setting("manage_windows", "manage_windows", _bool, "also balloon Windows guests", "both"),
    Setting("headroom", "headroom_kib", _size, "target: usable never planned below this", "both", metavar="SIZE"),
    Setting("max_shrink", "max_shrink_kib", _positive_size, "target: the most one shrink takes", "both",
            metavar="SIZE"),
    Setting("shares", "shares", _number(1, 1_000_000, integer=True),
            "target: weight of the guest's fair share under host pressure; fewer shares give back more", "both",
            metavar="N", flag_type=int),
    Setting("burst_wait", "burst_wait_s", _number(0, 7 * 86400),
            "target: a guest that cannot page (no swap seen, no autodeflate) is shrunk for saving only after "
            "this many seconds without a burst; 0: at once", "both", metavar="S", flag_type=float),
    Setting("idle_shrink", "idle_shrink", _choice(IDLE_SHRINK),
            "target: needed (an idle guest goes below the size the daemon found it at, or the largest it grew "
            "to since, only when the host needs the memory, and back to that size once it can back it) or "
            "always (the band shrinks idle guests on any host: more saved, and a burst then finds them smaller "
            "than doing nothing would)", "both",
            choices=IDLE_SHRINK),
    Setting("secs", "secs", _number(0.05, 86400), "seconds between cycles", metavar="S", flag_type=float),
    Setting("stats_period", "stats_period", _number(1, 3600, integer=True),
            "guest stats period set on domains that report no usable memory", metavar="S", flag_type=int),
    Setting("stale_after", "stale_after", _number(1, 86400, optional=True), "ignore stats older than this",
            metavar="S", flag_type=float, default_text="max(5, 3 x stats_period)"),
    Setting("policy", "policy", _choice(POLICIES),
            "decision rule: target, step (the original's fixed steps), or the peers' rules proxmox and mom, "
            "ported (best with --secs 10)", choices=POLICIES),
    Setting("host_reserve", "host.reserve", parse_reserve, "target: memory the host keeps, e.g. 2GiB or 10%",
            metavar="SIZE|PCT", default_text="max(10%, 1GiB)"),
    Setting("host_memory", "host.memory", _choice(HOST_MEMORY),
            "where host memory is read: auto (/proc locally, nodememstats for a remote URI), local, virsh, "
            "cgroup (the limit and usage of --host-cgroup), off", choices=HOST_MEMORY),
    Setting("host_cgroup", "host.cgroup", _cgroup_path,
            "with --host-memory cgroup: the memory cgroup the guests run in, its limit taken as the host's memory",
            metavar="DIR"),
    Setting("host_psi", "host.psi", _number(0, 100, optional=True),
            "target: host PSI memory 'some avg10' above which the host counts as short", metavar="AVG10",
            flag_type=float, default_text="off"),
    Setting("debug", "log.debug", _bool, "log a block per domain per cycle"),
    Setting("dry_run", "dry_run", _bool, "decide and log; never setmem, never switch a stats period on"),
    Setting("logdir", "log.logdir", _optional_text, "log to DIR/balloon-2395.log (rotated) instead of stderr",
            metavar="DIR", default_text="stderr"),
    Setting("connect", "connection.uris", _uris,
            "hypervisor URI; repeat it for several (the daemon serves them from one process, each with its own lock)",
            group="connection", metavar="URI", default_text="$LIBVIRT_DEFAULT_URI, else qemu:///system as root"),
    Setting("virsh", "connection.virsh", _text, "virsh binary", group="connection", metavar="PATH",
            default_text="virsh from PATH"),
    Setting("timeout", "connection.timeout", _number(0.1, 3600), "per virsh call timeout in seconds",
            group="connection", metavar="S", flag_type=float),
    Setting("session", "connection.session", _bool,
            "one long-lived virsh process for all calls instead of one per call", group="connection"),
    Setting("lock_dir", "connection.lock_dir", _optional_text, "where the instance lock lives", group="connection",
            metavar="DIR", default_text="/run/balloon-2395, or $XDG_RUNTIME_DIR/balloon-2395"),
    Setting("log_format", "log.format", _choice(LOG_FORMATS),
            "text (bare lines with priorities under systemd's journal) or json", group="operation",
            choices=LOG_FORMATS),
    Setting("ksm", "ksm", _choice(KSM_MODES),
            "when KSM runs: warn (one line saying what it means), refuse to start, ignore", group="operation",
            choices=KSM_MODES),
    # the file says `metrics: {textfile: PATH, port: N, address: IP}`; flags set these directly
    Setting("metrics_textfile", "metrics.textfile", _optional_text,
            "write Prometheus metrics to PATH (node_exporter textfile collector) after every cycle",
            group="operation", metavar="PATH", default_text="none"),
    Setting("metrics_port", "metrics.port", _number(1, 65535, integer=True, optional=True),
            "serve Prometheus metrics over HTTP on PORT", group="operation", metavar="PORT", flag_type=int,
            default_text="none"),
    Setting("metrics_address", "metrics.address", _text, "address the metrics endpoint listens on",
            group="operation", metavar="IP"),
)
# key in file/flags -> (field name, validator). Top-level keys that are also
# per-domain keys set the defaults every rule starts from.
_DOMAIN_KEYS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    s.key: (s.field, s.check) for s in SETTINGS if s.where != "top"}
_GLOBAL_KEYS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    s.key: (s.field, s.check) for s in SETTINGS if s.where == "top"}
_BAND = ("minimal", "maximal")
_TOP_LEVEL = {s.key: (s.field, s.check) for s in SETTINGS if s.where != "rule"}
KEYS = tuple(_TOP_LEVEL) + ("domains", "metrics")


def _unknown(key: Any, known) -> ValueError:
    hint = difflib.get_close_matches(str(key), list(known), n=1)
    return ValueError("unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _validate(key: str, table, value: Any) -> Tuple[str, Any]:
    name, check = table[key]
    try:
        return name, check(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _check_band(where: str, settings: DomainSettings, set_here: Collection[str], said: Mapping[str, str]) -> None:
    """minimal below maximal. Of the two, the one this layer (`where`: the file's top level, the flags, a
    rule, metadata) set is blamed, with the other's value and where it came from (`said`); both set here,
    both are named."""
    low, high = settings.minimal, settings.maximal
    if low < high:
        return
    if "maximal" in set_here and "minimal" not in set_here:
        raise ConfigError(where + "maximal", f"must be above minimal ({low:g}, {said['minimal']})", value=f"{high:g}")
    if "maximal" in set_here:
        raise ConfigError(where + "minimal", f"must be below maximal ({low:g} >= {high:g})")
    raise ConfigError(where + "minimal", f"must be below maximal ({high:g}, {said['maximal']})", value=f"{low:g}")


def _metadata_overrides(attrs: Tuple[Tuple[str, str], ...]) -> Tuple[Tuple[str, Any], ...]:
    """`<settings minimal="20" headroom="512MiB"/>` attributes, typed as YAML would type them."""
    out = []
    for key, raw in attrs:
        where = f"metadata {key}"
        if key not in _DOMAIN_KEYS:
            raise ConfigError(where, str(_unknown(key, _DOMAIN_KEYS)))
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError):  # PyYAML's int() and float() too
            value = raw
        if isinstance(value, (list, dict)):  # no setting takes one: said without expanding any alias in it
            raise ConfigError(where, f"expected a number, a size or true/false, got a YAML {type(value).__name__}")
        try:
            out.append(_validate(key, _DOMAIN_KEYS, value))
        except ConfigError as exc:
            raise ConfigError(where, exc.problem) from None
    return tuple(out)


def _rules(raw: Any, defaults: DomainSettings, said: Mapping[str, str]) -> Tuple[DomainRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError("domains", f"expected a mapping of name or glob to settings, got {_kind(raw)}")
    rules = []
    for pattern, body in raw.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("domains", f"a domain name or glob must be a non-empty string, got {_kind(pattern)}")
        where = f"domains.{_shown(pattern)}"
        if not isinstance(body, Mapping):
            raise ConfigError(where, f"expected a mapping of settings, got {_kind(body)}")
        overrides = []
        for key, value in body.items():
            if key not in _DOMAIN_KEYS:
                raise ConfigError(f"{where}.{_shown(key)}", str(_unknown(key, _DOMAIN_KEYS)))
            try:
                overrides.append(_validate(key, _DOMAIN_KEYS, value))
            except ConfigError as exc:
                raise ConfigError(f"{where}.{exc.key}", exc.problem) from None
        rule = DomainRule(pattern, tuple(overrides))
        _check_band(where + ".", replace(defaults, **dict(overrides)), dict(overrides), said)
        rules.append(rule)
    return tuple(rules)


def effective(config: Config) -> Dict[str, Any]:
    """The settings a config holds, as a file that `check-config` takes back: every top-level key with its
    value (null where the default is said in words: `check-config --print` says those), then the rules."""
    out: Dict[str, Any] = {}
    for s in SETTINGS:
        if s.where != "rule":
            out[s.key] = _as_written(s, s.value_in(config))
    by_field = {s.field: s for s in SETTINGS if s.where != "top"}
    out["domains"] = {rule.pattern: {by_field[name].key: _as_written(by_field[name], value)
                                     for name, value in rule.overrides} for rule in config.rules}
    return out


def render_effective(config: Config, path: str) -> str:
    """`effective()` as YAML, each default said in words beside a null; non-ASCII and control characters
    (a domain glob may hold any) as YAML escapes."""
    lines = [f"# the settings in effect: {shown(path)} over the defaults", ""]
    words = {s.key: s.default_shown for s in SETTINGS if s.default_text is not None}
    for key, value in effective(config).items():
        text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=1000).rstrip("\n")
        lines.append(text + (f"  # {words[key]}" if value is None and key in words else ""))
    return "\n".join(lines) + "\n"


def _as_written(setting: Setting, value: Any) -> Any:
    """A setting's value as the file writes it: sizes with their unit, the reserve as a size or N%."""
    if value is None or value == ():
        return None
    if setting.key == "connect":
        return value[0] if len(value) == 1 else list(value)
    if setting.key == "host_reserve":
        unit, amount = value
        return size_text(int(amount)) if unit == "kib" else f"{amount:g}%"
    return size_text(value) if setting.field.endswith("_kib") else value


def build(values: Mapping[str, Any], flags: Collection[str] = (), path: str = "") -> Config:
    """A Config from already-loaded values: a file's (read from `path`), the keys in `flags` given as
    flags over it. An error names the flag, or the file and the key."""
    try:
        return _build(values, flags, path)
    except ConfigError as exc:
        raise (exc.as_flag() if exc.key in flags else exc.at(path)) from None


def _build(values: Mapping[str, Any], flags: Collection[str], path: str) -> Config:
    domain_values: Dict[str, Any] = {}
    global_values: Dict[str, Any] = {}
    for key, value in {**_metrics_keys(values.get("metrics")), **values}.items():
        if key in ("domains", "metrics"):
            continue
        if key not in _TOP_LEVEL:
            raise ConfigError(_shown(key), str(_unknown(key, KEYS)))
        try:
            name, checked = _validate(key, _TOP_LEVEL, value)
        except ConfigError as exc:
            if key.startswith("metrics_") and key not in values:  # it came from the `metrics:` mapping
                raise ConfigError(key.replace("_", ".", 1), exc.problem) from None
            raise
        (domain_values if key in _DOMAIN_KEYS else global_values)[name] = checked
    defaults = DomainSettings(**domain_values)
    said = {key: _origin(key, values, flags, path) for key in _BAND}
    # a flag is the layer above the file: a band it breaks is its fault
    set_here = [key for key in _BAND if key in flags] or [key for key in _BAND if key in values]
    _check_band("", defaults, set_here, said)
    groups: Dict[str, Dict[str, Any]] = {}
    for name, value in global_values.items():
        group, _, member = name.rpartition(".")
        groups.setdefault(group, {})[member] = value
    top = groups.pop("", {})
    made = {name: record(**groups.get(name, {})) for name, record in _GROUPS.items()}
    return Config(defaults=defaults, rules=_rules(values.get("domains"), defaults, said),
                  band_from=(said["minimal"], said["maximal"]), **top, **made)


_GROUPS = {"connection": Connection, "host": HostWatch, "metrics": MetricsOutput, "log": LogOutput}


def _origin(key: str, values: Mapping[str, Any], flags: Collection[str], path: str) -> str:
    """Where a top-level value came from, as a band error says it."""
    if key in flags:
        return "from " + _flag(key)
    return f"from {path or 'the config'}" if key in values else "the default"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _metrics_keys(raw: Any) -> Dict[str, Any]:
    """`metrics: {textfile: ..., port: ...}` as the flat keys the flags also set."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("metrics", f"expected a mapping (textfile, port, address), got {_kind(raw)}")
    known = [k[len("metrics_"):] for k in _GLOBAL_KEYS if k.startswith("metrics_")]
    for key in raw:
        if key not in known:
            raise ConfigError(f"metrics.{_shown(key)}", str(_unknown(key, known)))
    return {f"metrics_{key}": value for key, value in raw.items()}


class _OnceLoader(yaml.SafeLoader):
    """Safe YAML in which a key given twice in one mapping is an error: PyYAML would keep the last
    silently, so a rule or a knob written twice would quietly lose one of its values."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        first: Dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: explicit keys may override it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if seen is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first at line {seen.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_file(path: str) -> Dict[str, Any]:
    """The mapping a YAML config file holds; an empty file is an empty mapping."""
    try:
        raw = read_config(path)
    except OSError as exc:
        raise ConfigError("file", f"cannot read: {exc.strerror}", path) from None
    except Refused as exc:
        raise ConfigError("file", str(exc), path) from None
    if not raw and os.path.abspath(path) != os.devnull:
        # a file emptied after the start (truncated, swapped) would drop every rule, exclusions included
        raise ConfigError("file", "is empty (a config without settings says so in a comment line)", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("file", f"not UTF-8 text (byte {exc.start})", path) from None
    try:
        data = yaml.load(text, Loader=_OnceLoader)  # a SafeLoader: no object of any other kind is built
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("file", f"not valid YAML{where}: {problem}", path) from None
    except RecursionError:
        raise ConfigError("file", "nested too deeply", path) from None
    except (ValueError, OverflowError):  # PyYAML's int(): Python refuses one of over 4300 digits
        raise ConfigError("file", "holds a number too long to read (thousands of digits)", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("file", f"expected a mapping of keys to values, got {_kind(data)}", path)
    return data


def default_path() -> Optional[str]:
    return DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None


def load(path: Optional[str], flags: Mapping[str, Any]) -> Config:
    """File values (if any) overlaid by flags; errors name the file or the flag."""
    file_values = read_file(path) if path else {}
    build(file_values, path=path or "")  # the file alone must be right, even where a flag would override it
    return build({**file_values, **flags}, tuple(flags), path or "")

