"""Real-hypervisor harness for the balloon-2395 end-to-end tests.

Standard library only (Python >= 3.9). It drives libvirt through the `virsh`
command line (argv lists, LC_ALL=C, ``-c qemu:///system``) and boots tiny
software-emulated guests (``<domain type='qemu'>``: a Debian cloud kernel and
an initramfs built by ``tests/e2e/prepare.sh``) that serve a command loop on a
virtio-serial channel. Typical use::

    from .harness import GuestFactory, check_prerequisites

    reason = check_prerequisites()          # None when the host is ready
    with GuestFactory() as factory:
        g = factory.create("web", current_mib=512, max_mib=1024, stats_period=1)
        g.dommemstat()["usable"]            # KiB
        g.hog("h1", 100)                    # guest allocates 100 MiB
        g.setmem_kib(400 * 1024)
    # every domain the factory created is destroyed and undefined (by UUID,
    # checked against the exact name) and its temp dir is removed.

Guest control protocol (see guest-init.sh): the host writes ``SEQ CMD ARGS``
lines on the channel's unix socket, the guest answers ``@@BEGIN SEQ@@``, output
lines, ``@@END SEQ RC@@``.

Safety: only domains created through this module are ever destroyed or
undefined; every such domain name contains ``b2395e2e``; a name that already
exists is never reused.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar, Union
from xml.sax.saxutils import escape, quoteattr

URI = os.environ.get("BALLOON_E2E_URI", "qemu:///system")
PREFIX = "b2395e2e"
CHANNEL = "org.balloon2395.ctl"
DEFAULT_CACHE = "/var/cache/balloon-2395-e2e"
STATE_DIR = "/run/balloon-2395-e2e"
HERE = Path(__file__).resolve().parent
DAEMON = HERE.parents[1] / "balloon-2395"
PREPARE = HERE / "prepare.sh"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

T = TypeVar("T")


# --------------------------------------------------------------------- errors
class HarnessError(RuntimeError):
    """Something in the e2e environment did not behave."""


class VirshError(HarnessError):
    def __init__(self, result: "VirshResult"):
        self.result = result
        super().__init__(
            f"virsh failed (exit {result.returncode}): {' '.join(result.argv)}\n"
            f"{result.err.strip()}"
        )


class GuestError(HarnessError):
    pass


class GuestTimeout(GuestError):
    pass


# --------------------------------------------------------------------- virsh
@dataclass
class VirshResult:
    argv: List[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "surrogateescape")

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> "VirshResult":
        if self.returncode != 0:
            raise VirshError(self)
        return self


def virsh_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    env.pop("LIBVIRT_DEFAULT_URI", None)  # -c is always explicit
    return env


def virsh(
    *args: Union[str, int],
    uri: Optional[str] = URI,
    timeout: float = 60.0,
    input: Optional[bytes] = None,
    check: bool = False,
) -> VirshResult:
    """Run ``virsh -c URI ARGS...`` (argv list, LC_ALL=C); never a shell.

    ``uri=None`` leaves out ``-c``. Raises subprocess.TimeoutExpired after
    ``timeout`` seconds (the virsh process is killed), VirshError when
    ``check`` and the exit status is not 0.
    """
    argv = ["virsh"]
    if uri is not None:
        argv += ["-c", uri]
    argv += [str(a) for a in args]
    t0 = time.monotonic()
    proc = subprocess.run(
        argv,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=virsh_env(),
        timeout=timeout,
    )
    res = VirshResult(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    if check:
        res.check()
    return res


def parse_kv(text: str) -> Dict[str, int]:
    """``key value`` lines (dommemstat) -> {key: int}; other lines ignored."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


_DOMAIN_RE = re.compile(r"^Domain: '(.*)'$")


def parse_domstats(text: str) -> Dict[str, Dict[str, Union[int, str]]]:
    """``virsh domstats`` output -> {domain name: {field: value}}.

    Integer values become int; the ``balloon.`` prefix is kept.
    """
    out: Dict[str, Dict[str, Union[int, str]]] = {}
    cur: Optional[Dict[str, Union[int, str]]] = None
    for line in text.splitlines():
        m = _DOMAIN_RE.match(line)
        if m:
            cur = out.setdefault(m.group(1), {})
            continue
        if cur is not None and "=" in line and line.startswith("  "):
            k, v = line.strip().split("=", 1)
            cur[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


def wait_for(
    predicate: Callable[[], Optional[T]],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (HarnessError, OSError, subprocess.TimeoutExpired) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------- assets
def cache_dir() -> Path:
    """Where prepare.sh put vmlinuz and initramfs.gz."""
    env = os.environ.get("BALLOON_E2E_CACHE")
    if env:
        return Path(env)
    try:
        recorded = Path(STATE_DIR, "cache-dir").read_text().strip()
        if recorded and Path(recorded, "initramfs.gz").exists():
            return Path(recorded)
    except OSError:
        pass
    return Path(DEFAULT_CACHE)


def assets() -> Dict[str, Path]:
    c = cache_dir()
    return {"kernel": c / "vmlinuz", "initrd": c / "initramfs.gz"}


def qemu_binary() -> str:
    return shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


def check_prerequisites(uri: str = URI) -> Optional[str]:
    """None when real guests can run here, else a one-line skip reason."""
    hint = f"run `sudo {PREPARE}` first"
    if os.environ.get("BALLOON_E2E_SKIP"):
        return "BALLOON_E2E_SKIP is set"
    if not os.uname().sysname == "Linux":
        return "e2e guests need a Linux host"
    if os.geteuid() != 0:
        return "e2e guests need root (qemu:///system, QEMU runs as root)"
    for tool in ("virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} not installed; {hint}"
    for what, path in assets().items():
        if not path.is_file():
            return f"guest {what} {path} missing; {hint}"
    try:
        res = virsh("version", uri=uri, timeout=20)
    except subprocess.TimeoutExpired:
        return f"`virsh -c {uri} version` timed out; {hint}"
    if not res.ok:
        first = (res.err.strip().splitlines() or ["?"])[0]
        return f"libvirt at {uri} does not answer ({first}); {hint}"
    if "QEMU" not in res.out:
        return f"no QEMU hypervisor behind {uri}"
    return None


# --------------------------------------------------------------------- guests
@dataclass
class Reply:
    seq: int
    rc: int
    lines: List[str]

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(label: str) -> str:
    return _SAFE.sub("-", label).strip("-") or "g"


class Guest:
    """One libvirt domain booted from the e2e assets.

    Options:
      current_mib / max_mib   <currentMemory> / <memory>
      balloon_device          False -> <memballoon model='none'/>
      balloon_driver          False -> kernel arg `noballoon`: the guest never
                              loads virtio_balloon (device present, no driver)
      stats_period            int seconds for <stats period=...>, None/0 for none
      autodeflate, free_page_reporting   memballoon attributes (bool)
      vcpus, cmdline_extra, swappiness
      thp                     False (default) -> transparent_hugepage=never
      metadata_xml            inner XML of <metadata> (e.g. libosinfo)
      features_xml            extra children of <features> (e.g. <hyperv>)
      devices_xml             extra children of <devices>
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        current_mib: int = 512,
        max_mib: int = 1024,
        balloon_device: bool = True,
        balloon_driver: bool = True,
        stats_period: Optional[int] = 1,
        autodeflate: bool = False,
        free_page_reporting: bool = False,
        vcpus: int = 1,
        swappiness: int = 10,
        thp: bool = False,
        cmdline_extra: str = "",
        metadata_xml: Optional[str] = None,
        features_xml: str = "",
        devices_xml: str = "",
        uri: str = URI,
    ):
        if PREFIX not in name:
            raise ValueError(f"guest name {name!r} must contain {PREFIX!r}")
        if current_mib > max_mib:
            raise ValueError("current_mib > max_mib")
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.current_mib = current_mib
        self.max_mib = max_mib
        self.balloon_device = balloon_device
        self.balloon_driver = balloon_driver and balloon_device
        self.stats_period = stats_period or None
        self.autodeflate = autodeflate
        self.free_page_reporting = free_page_reporting
        self.vcpus = vcpus
        self.swappiness = swappiness
        self.thp = thp
        self.cmdline_extra = cmdline_extra
        self.metadata_xml = metadata_xml
        self.features_xml = features_xml
        self.devices_xml = devices_xml
        self.uri = uri
        self.console_path = self.workdir / "console.log"
        self.socket_path = self.workdir / "ctl.sock"
        self.xml_path = self.workdir / "domain.xml"
        self.uuid: Optional[str] = None
        self.started_at: Optional[float] = None
        self.boot_seconds: Optional[float] = None
        self._sock: Optional[socket.socket] = None
        self._buf = b""
        self._seq = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------ XML
    @property
    def cmdline(self) -> str:
        words = ["console=ttyS0", "panic=1", f"swappiness={self.swappiness}"]
        if not self.thp:
            # With THP the guest raises min_free_kbytes (lower MemAvailable)
            # and keeps ~50 MiB of a freed 100 MiB hog off MemFree for a
            # while: numbers are far less predictable.
            words.append("transparent_hugepage=never")
        if not self.balloon_driver:
            words.append("noballoon")
        if self.cmdline_extra:
            words.append(self.cmdline_extra)
        return " ".join(words)

    def memballoon_xml(self) -> str:
        if not self.balloon_device:
            return "<memballoon model='none'/>"
        attrs = "model='virtio'"
        if self.autodeflate:
            attrs += " autodeflate='on'"
        if self.free_page_reporting:
            attrs += " freePageReporting='on'"
        if self.stats_period:
            return f"<memballoon {attrs}><stats period='{int(self.stats_period)}'/></memballoon>"
        return f"<memballoon {attrs}/>"

    def xml(self) -> str:
        a = assets()
        metadata = f"  <metadata>{self.metadata_xml}</metadata>\n" if self.metadata_xml else ""
        return f"""<domain type='qemu'>
  <name>{escape(self.name)}</name>
{metadata}  <memory unit='KiB'>{self.max_mib * 1024}</memory>
  <currentMemory unit='KiB'>{self.current_mib * 1024}</currentMemory>
  <vcpu>{self.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(a['kernel']))}</kernel>
    <initrd>{escape(str(a['initrd']))}</initrd>
    <cmdline>{escape(self.cmdline)}</cmdline>
  </os>
  <features><acpi/>{self.features_xml}</features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(qemu_binary())}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={quoteattr(str(self.console_path))}/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={quoteattr(str(self.console_path))}/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <source mode='bind' path={quoteattr(str(self.socket_path))}/>
      <target type='virtio' name='{CHANNEL}'/>
    </channel>
    {self.memballoon_xml()}
    {self.devices_xml}
  </devices>
</domain>
"""

    # ------------------------------------------------------------ lifecycle
    def virsh(self, *args: Union[str, int], **kw) -> VirshResult:
        kw.setdefault("uri", self.uri)
        return virsh(*args, **kw)

    def exists(self) -> bool:
        return self.virsh("domuuid", "--domain", self.name, timeout=30).ok

    def define(self) -> None:
        if self.uuid is not None:
            raise GuestError(f"{self.name} already defined by this harness")
        if self.exists():
            raise GuestError(f"a domain named {self.name!r} already exists; not touching it")
        self.xml_path.write_text(self.xml(), encoding="utf-8")
        self.virsh("define", "--file", str(self.xml_path), check=True)
        self.uuid = self.virsh("domuuid", "--domain", self.name, check=True).out.strip()
        _registry.add(self)

    def start(self) -> None:
        self._close()
        self.started_at = time.monotonic()
        self.virsh("start", "--domain", self._ref(), check=True, timeout=120)

    def boot(self, timeout: float = 120.0) -> float:
        """define (if needed) + start + wait_booted; returns the boot seconds."""
        if self.uuid is None:
            self.define()
        self.start()
        return self.wait_booted(timeout)

    def wait_booted(self, timeout: float = 120.0) -> float:
        """Wait for the guest to answer ping; then (balloon driver on) for
        the balloon to reach currentMemory and (stats on) for `usable`."""
        t0 = self.started_at or time.monotonic()
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise GuestTimeout(
                    f"{self.name} did not answer within {timeout:.0f}s; console tail:\n"
                    + self.console_tail()
                )
            if not self.is_running():
                raise GuestError(
                    f"{self.name} is {self.state()!r} while booting; console tail:\n"
                    + self.console_tail()
                )
            try:
                if self.command("ping", timeout=1.0, check=False).lines == ["pong"]:
                    break
            except (GuestError, OSError):
                time.sleep(0.2)
        self.boot_seconds = time.monotonic() - t0
        rest = max(5.0, deadline - time.monotonic())
        if self.balloon_driver:
            want = self.current_mib * 1024
            wait_for(lambda: self.dommemstat().get("actual") == want, rest,
                     what=f"{self.name} balloon at {want} KiB")
        if self.balloon_driver and self.stats_period:
            self.wait_fresh_stats(rest)
        return self.boot_seconds

    def wait_fresh_stats(self, timeout: float = 20.0) -> Dict[str, int]:
        """Wait for a guest stats report newer than now: `last_update`
        (seconds) must move past its current value, and `usable` be there.

        Right after boot (or a setmem), dommemstat still shows the report the
        guest sent before the balloon moved; this skips it."""
        first = self.dommemstat().get("last_update")

        def check() -> Optional[Dict[str, int]]:
            stats = self.dommemstat()
            if "usable" in stats and stats.get("last_update") != first:
                return stats
            return None
        return wait_for(check, timeout, what=f"{self.name} fresh memory stats")

    def _ref(self) -> str:
        return self.uuid or self.name

    def state(self) -> str:
        res = self.virsh("domstate", "--domain", self._ref(), timeout=30)
        return res.out.strip() if res.ok else "missing"

    def is_running(self) -> bool:
        return self.state() == "running"

    def destroy(self) -> None:
        """Power off (only this domain, by UUID); no error when not running."""
        self._close()
        if self.uuid and self.is_running():
            res = self.virsh("destroy", "--domain", self.uuid, timeout=60)
            if not res.ok and self.is_running():
                res.check()

    def undefine(self) -> None:
        if not self.uuid:
            return
        # make sure the UUID still is the domain we created under our name
        res = self.virsh("domname", "--domain", self.uuid, timeout=30)
        if res.ok and res.out.strip() == self.name:
            self.virsh("undefine", "--domain", self.uuid, timeout=60).check()
        self.uuid = None
        _registry.discard(self)

    def cleanup(self) -> None:
        try:
            self.destroy()
        finally:
            self.undefine()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------ virsh views
    def dommemstat(self) -> Dict[str, int]:
        return parse_kv(self.virsh("dommemstat", "--domain", self._ref(), check=True).out)

    def domstats(self) -> Dict[str, Union[int, str]]:
        out = self.virsh("domstats", "--balloon", "--domain", self._ref(), check=True).out
        stats = parse_domstats(out)
        return next(iter(stats.values()), {})

    def setmem_kib(self, kib: int, *, live: bool = True, check: bool = True) -> VirshResult:
        args = ["setmem", "--domain", self._ref(), "--size", str(int(kib))]
        if live:
            args.append("--live")
        return self.virsh(*args, check=check)

    def set_stats_period(self, seconds: int, *, live: bool = True) -> VirshResult:
        args = ["dommemstat", "--domain", self._ref(), "--period", str(int(seconds))]
        if live:
            args.append("--live")
        return self.virsh(*args, check=True)

    def wait_actual(self, kib: int, timeout: float = 20.0) -> Dict[str, int]:
        """Wait until dommemstat's `actual` is `kib`; returns that dommemstat."""
        def check() -> Optional[Dict[str, int]]:
            stats = self.dommemstat()
            return stats if stats.get("actual") == kib else None
        return wait_for(check, timeout, what=f"{self.name} actual == {kib} KiB")

    # ------------------------------------------------------------ console
    def console_text(self) -> str:
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def wait_console(self, pattern: str, timeout: float = 30.0) -> "re.Match[str]":
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.console_text()), timeout,
                        what=f"console /{pattern}/ on {self.name}")

    # ------------------------------------------------------------ control channel
    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.socket_path))
            except OSError:
                s.close()
                raise
            self._sock = s
            self._buf = b""
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b""

    def command(self, cmd: str, *args: Union[str, int], timeout: float = 30.0,
                check: bool = True) -> Reply:
        """Send one command to the guest's init loop and wait for its reply.

        Raises GuestTimeout when no reply came in time, GuestError when
        ``check`` and the command's exit status is not 0.
        """
        words = [cmd] + [str(a) for a in args]
        for w in words:
            if "\n" in w or "\r" in w:
                raise ValueError("newline in guest command")
        with self._lock:
            self._seq += 1
            seq = self._seq
            sock = self._connect()
            try:
                sock.sendall(f"{seq} {' '.join(words)}\n".encode("utf-8"))
                reply = self._read_reply(seq, timeout)
            except OSError as exc:
                self._close()
                raise GuestError(f"control channel of {self.name}: {exc}") from exc
        if check and reply.rc != 0:
            raise GuestError(f"guest command {' '.join(words)!r} on {self.name} "
                             f"exited {reply.rc}: {reply.text.strip()}")
        return reply

    def _read_reply(self, seq: int, timeout: float) -> Reply:
        assert self._sock is not None
        begin = f"@@BEGIN {seq}@@"
        end_prefix = f"@@END {seq} "
        deadline = time.monotonic() + timeout
        collecting = False
        lines: List[str] = []
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                if line == begin:
                    collecting, lines = True, []
                elif collecting and line.startswith(end_prefix) and line.endswith("@@"):
                    return Reply(seq, int(line[len(end_prefix):-2]), lines)
                elif collecting:
                    lines.append(line)
                # else: stale output of an earlier (timed out) command
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestTimeout(f"no reply to command #{seq} from {self.name} in {timeout}s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                self._close()
                raise GuestError(f"control channel of {self.name} closed")
            self._buf += chunk

    # ------------------------------------------------------------ guest commands
    def ping(self, timeout: float = 5.0) -> bool:
        try:
            return self.command("ping", timeout=timeout, check=False).lines == ["pong"]
        except GuestError:
            return False

    def meminfo(self) -> Dict[str, int]:
        """/proc/meminfo of the guest, values in kB."""
        out: Dict[str, int] = {}
        for line in self.command("meminfo").lines:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key.strip()] = int(parts[0])
        return out

    def hog(self, name: str, mib: int, timeout: float = 120.0) -> int:
        """Start a process holding `mib` MiB of touched anonymous memory;
        returns once it holds all of it (GuestError if it died, e.g. OOM)."""
        reply = self.command("hog", name, int(mib), timeout=timeout)
        return int(reply.lines[-1].split()[1])

    def ramp(self, name: str, step_mib: int, max_mib: int, interval_ms: int = 1000,
             timeout: float = 60.0) -> int:
        """Hog that grows by step_mib every interval_ms up to max_mib."""
        reply = self.command("ramp", name, int(step_mib), int(max_mib), int(interval_ms),
                             timeout=timeout)
        return int(reply.lines[-1].split()[1])

    def free(self, name: str, timeout: float = 30.0) -> None:
        self.command("free", name, timeout=timeout)

    def hog_status(self, name: str) -> Tuple[bool, int]:
        """(alive, MiB held) of a hog."""
        parts = self.command("status", name).lines[-1].split()
        return parts[1] == "alive", int(parts[2])

    def oom_kills(self) -> int:
        """The guest's OOM-kill count (/proc/vmstat oom_kill)."""
        for line in self.command("oom").lines:
            k, _, v = line.partition(" ")
            if k == "oom_kill" and v.strip().isdigit():
                return int(v)
        raise GuestError("no oom_kill counter in reply")

    def shell(self, code: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run busybox sh code in the guest (single line); returns its output."""
        return self.command("sh", code, timeout=timeout, check=check).text

    def poweroff(self) -> None:
        """Power the guest off from inside (the domain goes to shut off)."""
        try:
            self.command("poweroff", timeout=2.0, check=False)
        except GuestError:
            pass
        self._close()


class _Registry:
    """Guests defined by this process, destroyed at interpreter exit if the
    test code did not clean them up (e.g. KeyboardInterrupt)."""

    def __init__(self) -> None:
        self._guests: "weakref.WeakSet[Guest]" = weakref.WeakSet()
        atexit.register(self.cleanup_all)

    def add(self, g: Guest) -> None:
        self._guests.add(g)

    def discard(self, g: Guest) -> None:
        self._guests.discard(g)

    def cleanup_all(self) -> None:
        for g in list(self._guests):
            try:
                g.cleanup()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


_registry = _Registry()


class GuestFactory:
    """Creates guests named ``b2395e2e-<token>-<label>`` in a private temp
    dir and removes all of them (and the dir) on cleanup()."""

    def __init__(self, token: Optional[str] = None, base_dir: Optional[str] = None,
                 uri: str = URI, keep_logs: Optional[bool] = None):
        self.token = token or secrets.token_hex(3)
        self.uri = uri
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.token}-",
                                             dir=base_dir or "/tmp"))
        self.guests: List[Guest] = []
        self.keep_logs = (bool(os.environ.get("BALLOON_E2E_KEEP"))
                          if keep_logs is None else keep_logs)
        self._n = 0

    def name_for(self, label: str) -> str:
        return f"{PREFIX}-{self.token}-{label}"

    def guest(self, label: str, *, name: Optional[str] = None, **opts) -> Guest:
        """A Guest object (not yet defined); cleaned up with the factory."""
        self._n += 1
        wd = self.workdir / f"{self._n}-{_safe(label)[:20]}"
        g = Guest(name or self.name_for(label), wd, uri=self.uri, **opts)
        self.guests.append(g)
        return g

    def create(self, label: str, *, name: Optional[str] = None, boot: bool = True,
               timeout: float = 120.0, **opts) -> Guest:
        """Define and (unless boot=False) start a guest and wait until booted."""
        g = self.guest(label, name=name, **opts)
        g.define()
        if boot:
            g.start()
            g.wait_booted(timeout)
        return g

    def cleanup(self) -> None:
        errors = []
        for g in reversed(self.guests):
            try:
                g.cleanup()
            except Exception as exc:  # noqa: BLE001 - go on with the others
                errors.append(f"{g.name}: {exc}")
        self.guests.clear()
        if not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise HarnessError("cleanup failed: " + "; ".join(errors))

    def __enter__(self) -> "GuestFactory":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class DaemonProcess:
    """The real balloon-2395 managing only `managed` (a domain name or glob): every other
    domain on the host is excluded by its config. Its own lock dir, stdout and stderr to a
    log file, stopped by its pid (SIGTERM, then SIGKILL). A context manager."""

    def __init__(self, workdir: Path, managed: str, *args: str, config: str = "", uri: str = URI) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "daemon.log"
        conf = self.dir / "config.yaml"
        # The first matching glob wins (an exact name wins anyway): ours managed, the rest excluded.
        conf.write_text(config + f"domains:\n  {json.dumps(managed)}: {{}}\n  '*': {{exclude: true}}\n")
        self.argv = [str(DAEMON), "--config", str(conf), "--connect", uri, "--lock-dir", str(self.dir / "lock"),
                     *args]
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    def start(self) -> "DaemonProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def run_once(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv + list(args), capture_output=True, text=True, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> Optional[int]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def own_domains(uri: str = URI) -> List[str]:
    """Names of all defined domains containing the harness prefix (for
    diagnostics; the harness itself only removes what it created)."""
    res = virsh("list", "--all", "--name", uri=uri, timeout=30)
    return [n for n in res.out.splitlines() if PREFIX in n]


__all__ = [
    "URI", "PREFIX", "CHANNEL", "LIBOSINFO_NS", "HarnessError", "VirshError",
    "GuestError", "GuestTimeout", "VirshResult", "Reply", "virsh", "virsh_env",
    "parse_kv", "parse_domstats", "wait_for", "cache_dir", "assets",
    "check_prerequisites", "Guest", "GuestFactory", "DaemonProcess", "own_domains",
]
