"""The Debian 12 guest as a libvirt domain: debian_image.py's image booted directly (its kernel and
initrd, root=/dev/vda), root on a virtio disk of its own (a qcow2 overlay over the shared image, in
the guest's temp dir), a swap disk of its own, systemd, journald, Redis, and the workload agent
(tests/e2e/debian/agent.py) on the busybox guest's control channel. Everything Guest does works
here (hog, ramp, free, meminfo, oom_kills, dommemstat, setmem_kib, rss_kib, ...); DebianGuest adds
the page cache, tmpfs, Redis and swap. Typical use (as root, after `.ci/debian-image`)::

    from balloon2395_testkit.debian_guest import DebianGuestFactory, not_ready

    reason = not_ready()                    # None when the image and the hypervisor are there
    with DebianGuestFactory() as factory:   # guests named b2395e2e-deb<token>-<label>
        g = factory.create("web", current_mib=1024, max_mib=1024, swap_mib=256)
        g.cache_fill(256)                   # MiB of files read into the page cache
        g.redis_load(200)                   # Redis holds 200 MiB of data
        g.hog("burst", 300)                 # as on the busybox guest
        g.swap()["pswpout"], g.oom_kills(), g.meminfo()["Cached"]

Several guests may share one image (each writes to its own overlay); one at a time is what a 2-core
host boots in reasonable time under software emulation.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, cast
from xml.sax.saxutils import quoteattr

from .debian_image import DebianImage, find_image, image_not_ready
from .guests import Guest, GuestFactory, GuestSpec
from .prepared import check_prerequisites
from .virsh_cli import URI

BOOT_TIMEOUT = 300.0  # s from `virsh start` to the agent's answer, under software emulation on a busy host
# Software emulation's translated-code cache is QEMU memory a KVM guest does not have: unbounded (1 GiB
# by default), it grew to 190-230 MiB of RSS within minutes of a boot and kept growing with the code run,
# so the host memory a replay measured depended on it. 64 MiB fills during the boot and then stays put
# (boot time 22.9 s against 23.0 s), which leaves QEMU's cost beside the guest's pages nearly constant.
TCG_CACHE_XML = "<tcg><tb-cache unit='MiB'>64</tb-cache></tcg>"
READY = re.compile(r"B2395E2E: agent READY port=\S+ uptime ([0-9.]+)")


def not_ready(uri: str = URI) -> Optional[str]:
    """None when Debian guests can run here, else why not (a skip reason)."""
    if shutil.which("qemu-img") is None:
        return "qemu-img not installed; run `sudo .ci/debian-image`"
    return image_not_ready() or check_prerequisites(uri)


def numbers(lines: List[str]) -> Dict[str, int]:
    """`NAME VALUE` reply lines as ints (the lines whose value is one)."""
    out: Dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


class DebianGuest(Guest):
    """One Debian guest, made as its GuestSpec says (SPEC_DEFAULTS: Debian's swappiness 60, TCG_CACHE_XML's
    bounded translation cache, where the caller does not say), and:
      image        the DebianImage to boot (default: the cached one of the current recipe)
      swap_mib     size of its swap disk (/dev/vdb); 0: no swap
    """

    SPEC_DEFAULTS: Dict[str, Any] = {"swappiness": 60, "features_xml": TCG_CACHE_XML}

    def __init__(self, name: str, workdir: Path, spec: Optional[GuestSpec] = None, *,
                 image: Optional[DebianImage] = None, swap_mib: int = 256) -> None:
        super().__init__(name, workdir, spec or GuestSpec(**self.SPEC_DEFAULTS))
        self.image = image or find_image()
        self.swap_mib = swap_mib
        self.root_disk = self.workdir / "root.qcow2"
        self.swap_disk = self.workdir / "swap.raw"
        self.spec = replace(self.spec, devices_xml=self.disks_xml() + self.spec.devices_xml)

    # ------------------------------------------------------------ the domain
    def boot_files(self) -> Dict[str, Path]:
        return {"kernel": self.image.kernel, "initrd": self.image.initrd}

    @property
    def cmdline(self) -> str:
        # quiet, and systemd's status only when something fails or hangs: every byte on the emulated
        # serial console costs the boot under software emulation (the console log keeps warnings)
        words = ["console=ttyS0", "quiet", "systemd.show_status=auto", "root=/dev/vda", "rw", "panic=1",
                 f"sysctl.vm.swappiness={self.spec.swappiness}"]
        if not self.spec.thp:
            words.append("transparent_hugepage=never")  # as on the busybox guest: predictable free memory
        if not self.spec.driver_loaded:
            words.append("module_blacklist=virtio_balloon")
        if not self.swap_mib:
            words.append("systemd.mask=dev-vdb.swap")  # the image's fstab names the swap disk
        if self.spec.cmdline_extra:
            words.append(self.spec.cmdline_extra)
        return " ".join(words)

    def disks_xml(self) -> str:
        disks = [("qcow2", self.root_disk, "vda")] + ([("raw", self.swap_disk, "vdb")] if self.swap_mib else [])
        return "".join(f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{kind}'/>
      <source file={quoteattr(str(path))}/>
      <target dev='{dev}' bus='virtio'/>
    </disk>""" for kind, path, dev in disks) + "\n"

    def define(self) -> None:
        self.make_disks()
        super().define()

    def make_disks(self) -> None:
        """The guest's root (writes go to an overlay: the image stays as built) and its swap."""
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.rootfs),
                        str(self.root_disk)], check=True, capture_output=True)
        if self.swap_mib:
            with open(self.swap_disk, "wb") as f:
                f.truncate(self.swap_mib << 20)
            self.swap_disk.chmod(0o600)
            subprocess.run(["mkswap", "-L", "b2395swap", str(self.swap_disk)], check=True, capture_output=True)

    def ready_uptime(self) -> Optional[float]:
        """The guest's own uptime (s) when its agent came up, from the console: the boot without
        libvirt's and QEMU's start."""
        m = READY.search(self.console_text())
        return float(m.group(1)) if m else None

    # ------------------------------------------------------------ workloads
    def cache_fill(self, mib: int, timeout: float = 600.0) -> float:
        """Read `mib` MiB of the image's files (into the page cache); returns the seconds it took."""
        line = self.command("cache", int(mib), timeout=timeout).lines[0]
        return float(line.split()[4])

    def cache_drop(self) -> None:
        """Drop those files from the page cache."""
        self.command("uncache", timeout=60.0)

    def tmpfs_fill(self, mib: int, timeout: float = 300.0) -> int:
        """Write `mib` MiB more into the agent's tmpfs; returns the MiB it holds now."""
        return int(self.command("tmpfs", int(mib), timeout=timeout).lines[-1].split()[1])

    def tmpfs_free(self) -> None:
        self.command("tmpfs_free", timeout=60.0)

    def redis_load(self, mib: int, timeout: float = 600.0) -> Dict[str, int]:
        """Load Redis until it holds `mib` MiB of data; its used_memory_kib and used_memory_rss_kib."""
        return numbers(self.command("redis", int(mib), timeout=timeout).lines)

    def redis_flush(self) -> Dict[str, int]:
        """Empty Redis and have it give its memory back; the figures after."""
        return numbers(self.command("redis_flush", timeout=120.0).lines)

    def redis_info(self) -> Dict[str, int]:
        return numbers(self.command("redis_info").lines)

    # ------------------------------------------------------------ figures
    def vmstat(self) -> Dict[str, int]:
        return numbers(self.command("vmstat").lines)

    def swap(self) -> Dict[str, int]:
        """pswpin, pswpout (pages), SwapTotal, SwapFree (kB) and `swap:DEVICE` used (KiB) per device."""
        reply = self.command("swap").lines
        out = numbers(reply)
        for line in reply:
            parts = line.split()
            if parts[0] == "swap" and len(parts) == 4:
                out[f"swap:{parts[1]}"] = int(parts[3])
        return out

    def system_state(self) -> Tuple[str, List[str]]:
        """systemd's state (running, degraded, starting, ...) and its failed units."""
        lines = self.command("state").lines
        state = next((line.split(None, 1)[1] for line in lines if line.startswith("state ")), "")
        return state, [line.split()[1] for line in lines if line.startswith("failed ")]


class DebianGuestFactory(GuestFactory):
    """GuestFactory for Debian guests: named ``b2395e2e-deb<token>-<label>``, booting `image`
    (default: the cached image of the current recipe), BOOT_TIMEOUT to answer."""

    guest_class = DebianGuest

    def __init__(self, image: Optional[DebianImage] = None, token: Optional[str] = None, **kw) -> None:
        super().__init__(token=token or "deb" + secrets.token_hex(3), **kw)
        self.image = image or find_image()

    def guest(self, label: str, *, name: Optional[str] = None, **opts) -> DebianGuest:
        opts.setdefault("image", self.image)
        return cast(DebianGuest, super().guest(label, name=name, **opts))

    def create(self, label: str, *, name: Optional[str] = None, boot: bool = True,
               timeout: float = BOOT_TIMEOUT, **opts) -> DebianGuest:
        return cast(DebianGuest, super().create(label, name=name, boot=boot, timeout=timeout, **opts))
