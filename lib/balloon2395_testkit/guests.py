"""Real libvirt guests for the e2e tests and the calibration: tiny software-emulated domains
(``<domain type='qemu'>``: a Debian cloud kernel and an initramfs built by ``tests/e2e/prepare.sh``)
that serve a command loop on a virtio-serial channel (guest_channel.py). Typical use::

    from balloon2395_testkit.guests import GuestFactory
    from balloon2395_testkit.prepared import check_prerequisites

    reason = check_prerequisites()          # None when the host is ready
    with GuestFactory() as factory:
        g = factory.create("web", current_mib=512, max_mib=1024, stats_period=1)
        g.dommemstat()["usable"]            # KiB
        g.hog("h1", 100)                    # guest allocates 100 MiB
        g.setmem_kib(400 * 1024)
    # every domain the factory created is destroyed and undefined (by UUID,
    # checked against the exact name) and its temp dir is removed.

Safety: only domains created through this module are ever destroyed or
undefined; every such domain name contains ``b2395e2e``; a name that already
exists is never reused.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, Union
from xml.sax.saxutils import escape, quoteattr

from .guest_channel import GuestChannel, GuestError, GuestTimeout, Reply
from .prepared import assets, qemu_binary
from .virsh_cli import URI, VirshResult, parse_domstats, parse_kv, virsh
from .waiting import HarnessError, wait_for

PREFIX = "b2395e2e"
CHANNEL = "org.balloon2395.ctl"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
UNSAFE_IN_DIR_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def dir_name(label: str) -> str:
    return UNSAFE_IN_DIR_NAME.sub("-", label).strip("-") or "g"


@dataclass(frozen=True)
class GuestSpec:
    """How a test guest is made.

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

    current_mib: int = 512
    max_mib: int = 1024
    balloon_device: bool = True
    balloon_driver: bool = True
    stats_period: Optional[int] = 1
    autodeflate: bool = False
    free_page_reporting: bool = False
    vcpus: int = 1
    swappiness: int = 10
    thp: bool = False
    cmdline_extra: str = ""
    metadata_xml: Optional[str] = None
    features_xml: str = ""
    devices_xml: str = ""
    uri: str = URI

    @property
    def driver_loaded(self) -> bool:
        return self.balloon_driver and self.balloon_device


SPEC_FIELDS = frozenset(f.name for f in fields(GuestSpec))


class Guest:
    """One libvirt domain booted from the e2e assets, made as its GuestSpec says."""

    # what this kind of guest is made with where the caller does not say (GuestFactory.guest)
    SPEC_DEFAULTS: Dict[str, Any] = {}

    def __init__(self, name: str, workdir: Path, spec: GuestSpec = GuestSpec()):
        if PREFIX not in name:
            raise ValueError(f"guest name {name!r} must contain {PREFIX!r}")
        if spec.current_mib > spec.max_mib:
            raise ValueError("current_mib > max_mib")
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.uri = spec.uri
        self.console_path = self.workdir / "console.log"
        self.socket_path = self.workdir / "ctl.sock"
        self.xml_path = self.workdir / "domain.xml"
        self.uuid: Optional[str] = None
        self.started_at: Optional[float] = None
        self.boot_seconds: Optional[float] = None
        self.channel = GuestChannel(name, self.socket_path)

    # ------------------------------------------------------------ XML
    @property
    def cmdline(self) -> str:
        words = ["console=ttyS0", "panic=1", f"swappiness={self.spec.swappiness}"]
        if not self.spec.thp:
            # With THP the guest raises min_free_kbytes (lower MemAvailable)
            # and keeps ~50 MiB of a freed 100 MiB hog off MemFree for a
            # while: numbers are far less predictable.
            words.append("transparent_hugepage=never")
        if not self.spec.driver_loaded:
            words.append("noballoon")
        if self.spec.cmdline_extra:
            words.append(self.spec.cmdline_extra)
        return " ".join(words)

    def memballoon_xml(self) -> str:
        if not self.spec.balloon_device:
            return "<memballoon model='none'/>"
        attrs = "model='virtio'"
        if self.spec.autodeflate:
            attrs += " autodeflate='on'"
        if self.spec.free_page_reporting:
            attrs += " freePageReporting='on'"
        if self.spec.stats_period:
            return f"<memballoon {attrs}><stats period='{int(self.spec.stats_period)}'/></memballoon>"
        return f"<memballoon {attrs}/>"

    def boot_files(self) -> Dict[str, Path]:
        """The kernel and initrd the domain boots directly: prepare.sh's (debian_guest.py has its own)."""
        return assets()

    def xml(self) -> str:
        a = self.boot_files()
        metadata = f"  <metadata>{self.spec.metadata_xml}</metadata>\n" if self.spec.metadata_xml else ""
        return f"""<domain type='qemu'>
  <name>{escape(self.name)}</name>
{metadata}  <memory unit='KiB'>{self.spec.max_mib * 1024}</memory>
  <currentMemory unit='KiB'>{self.spec.current_mib * 1024}</currentMemory>
  <vcpu>{self.spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(a['kernel']))}</kernel>
    <initrd>{escape(str(a['initrd']))}</initrd>
    <cmdline>{escape(self.cmdline)}</cmdline>
  </os>
  <features><acpi/>{self.spec.features_xml}</features>
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
    {self.spec.devices_xml}
  </devices>
</domain>
"""

    # ------------------------------------------------------------ lifecycle
    def virsh(self, *args: Union[str, int], **kw: Any) -> VirshResult:
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
        self.channel.close()
        self.started_at = time.monotonic()
        self.virsh("start", "--domain", self._ref(), check=True, timeout=120)

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
        if self.spec.driver_loaded:
            want = self.spec.current_mib * 1024
            wait_for(lambda: self.dommemstat().get("actual") == want, rest,
                     what=f"{self.name} balloon at {want} KiB")
        if self.spec.driver_loaded and self.spec.stats_period:
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
        self.channel.close()
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

    def rss_kib(self) -> int:
        """What the guest costs the host: its QEMU process's resident set (domstats balloon.rss)."""
        return int(self.domstats()["balloon.rss"])

    def steady_rss_kib(self, timeout: float = 60.0, every: float = 1.0, slack_kib: int = 1024) -> int:
        """The RSS once two reads `every` seconds apart agree within `slack_kib`: QEMU has discarded
        what a balloon move gave it, or a hog's pages are all faulted in. Not for free page reporting,
        whose passes come 2 s apart."""
        last: List[int] = []

        def check() -> Optional[int]:
            now = self.rss_kib()
            steady = bool(last) and abs(now - last[-1]) <= slack_kib
            last.append(now)
            return now if steady else None
        return wait_for(check, timeout, interval=every, what=f"{self.name} RSS steady")

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
    def command(self, cmd: str, *args: Union[str, int], timeout: float = 30.0,
                check: bool = True) -> Reply:
        """Send one command to the guest's init loop and wait for its reply.

        Raises GuestTimeout when no reply came in time, GuestError when
        ``check`` and the command's exit status is not 0.
        """
        words = [cmd] + [str(a) for a in args]
        reply = self.channel.command(words, timeout)
        if check and reply.rc != 0:
            raise GuestError(f"guest command {' '.join(words)!r} on {self.name} "
                             f"exited {reply.rc}: {reply.text.strip()}")
        return reply

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



def exit_on_sigterm() -> None:
    """For a program that boots guests: SIGTERM ends it as sys.exit does, so its `with` blocks and the
    atexit cleanup remove every guest it booted instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))

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

    guest_class: Type[Guest] = Guest

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
        wd = self.workdir / f"{self._n}-{dir_name(label)[:20]}"
        spec = GuestSpec(**{**self.guest_class.SPEC_DEFAULTS, "uri": self.uri,
                            **{k: v for k, v in opts.items() if k in SPEC_FIELDS}})
        extra = {k: v for k, v in opts.items() if k not in SPEC_FIELDS}  # the guest kind's own (a Debian image)
        g = self.guest_class(name or self.name_for(label), wd, spec, **extra)
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
