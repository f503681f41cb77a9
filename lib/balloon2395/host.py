"""Observing the host: how much memory it has and can still give (local /proc, virsh nodememstats for a
remote connection, or the memory cgroup the host confines its guests in), and whether PSI says tasks
already stall."""

from __future__ import annotations

import logging
import os
import stat
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

from . import PROG
from .config import Config
from .logs.lines import about
from .observation import HostMemory
from .safefiles import Refused, kind
from .virsh.commands import VirshCommands, VirshError
from .virsh.output import VirshOutputError, parse_nodememstats

log = logging.getLogger(PROG)

MEMINFO = "/proc/meminfo"
PSI = "/proc/pressure/memory"
CGROUP_FILE_MAX = 1 << 16  # memory.stat is a few KiB; a cgroup file larger than this is not one
_READ_ERRORS = (OSError, ValueError, KeyError, Refused, VirshError, VirshOutputError)


def is_remote(uri: str) -> bool:
    """qemu+ssh://host2/system is another host; qemu:///system is this one."""
    return bool(urlsplit(uri).netloc)


def parse_meminfo(text: str) -> Dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def parse_psi_some_avg10(text: str) -> Optional[float]:
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    return float(value)
    return None


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def read_no_symlink(path: str) -> str:
    """A small file read as root with no symlink followed anywhere on its path: each directory from / is
    opened O_NOFOLLOW relative to the one before, then the file itself, which must be a regular file (a
    FIFO would block, a device could act). Refused names the entry."""
    if not os.path.isabs(path):
        raise Refused(f"{path}: not an absolute path")
    parts = [part for part in path.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise Refused(f"{path}: not a plain path to a file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags | os.O_DIRECTORY)
    try:
        for at, part in enumerate(parts[:-1]):
            try:
                new = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except OSError as exc:
                _refuse_symlink(fd, part, "/" + "/".join(parts[:at + 1]))
                raise OSError(exc.errno, exc.strerror, "/" + "/".join(parts[:at + 1])) from None
            os.close(fd)
            fd = new
        try:
            new = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            _refuse_symlink(fd, parts[-1], path)
            raise OSError(exc.errno, exc.strerror, path) from None
        os.close(fd)
        fd = new
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Refused(f"{path} is {kind(mode)}, not a regular file")
        data = os.read(fd, CGROUP_FILE_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > CGROUP_FILE_MAX:
        raise ValueError(f"{path}: larger than {CGROUP_FILE_MAX} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not ASCII text") from None


def _refuse_symlink(dir_fd: int, name: str, shown: str) -> None:
    """After an O_NOFOLLOW open failed (ELOOP or ENOTDIR on a symlink): say so, rather than the errno."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise Refused(f"{shown} is a symlink: refused (give the cgroup's real path)")


def _bytes_value(text: str, path: str) -> Optional[int]:
    """A cgroup file holding one number of bytes; None for "max" (no limit)."""
    value = text.strip()
    if value == "max":
        return None
    if not value.isdigit():
        raise ValueError(f"{path}: expected a number of bytes, got {value[:40]!r}")
    return int(value)


def _stat_value(text: str, key: str, path: str) -> int:
    """A key of memory.stat (`key bytes` lines), in bytes."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            if not value.strip().isdigit():
                raise ValueError(f"{path}: {key} is not a number of bytes: {value.strip()[:40]!r}")
            return int(value.strip())
    raise ValueError(f"{path}: no {key} line")


class HostReader:
    def __init__(self, config: Config, virsh: VirshCommands, uri: str, read: Callable[[str], str] = _read,
                 read_cgroup: Callable[[str], str] = read_no_symlink) -> None:
        source = config.host.memory
        if source == "auto":
            source = "virsh" if is_remote(uri) else "local"
        self.source, self.config, self.virsh, self.read_file = source, config, virsh, read
        self.read_cgroup = read_cgroup
        self.remote = is_remote(uri)
        self._failing = False
        self._psi_failing = False

    def read(self) -> Optional[HostMemory]:
        """None when host memory is not watched or cannot be read (then nothing limits growth). The optional
        PSI signal never takes the mandatory figures with it: when only PSI cannot be read, the totals and
        the reserve still hold (with pressure unknown, read as none: see _pressure)."""
        if self.source == "off":
            return None
        try:
            total, available, swap_free, psi_path = self._totals()
            if total <= 0:
                raise ValueError(f"host total memory is {total} KiB")
        except _READ_ERRORS as exc:
            if not self._failing:
                message = " ".join(str(getattr(exc, "message", exc)).split())  # one line, whatever it held
                log.warning("cannot read host memory (%s): %s; growth is not limited by the host",
                            self._what(), message, extra=about("host-read-failed"))
            self._failing = True
            return None
        if self._failing:
            log.info("host memory readable again (%s)", self._what(), extra=about("host-read-back"))
            self._failing = False
        available = max(0, min(available, total))
        return HostMemory(total, available, self.config.host_reserve_kib(total), self._pressure(psi_path),
                          None if swap_free is None else max(swap_free, 0))

    def _what(self) -> str:
        return f"cgroup {self.config.host.cgroup}" if self.source == "cgroup" else self.source

    def _totals(self) -> Tuple[int, int, Optional[int], Optional[str]]:
        """(total KiB, available KiB, free swap KiB or None, the PSI file that goes with them or None)."""
        if self.source == "local":
            info = parse_meminfo(self.read_file(MEMINFO))
            return info["MemTotal"], info["MemAvailable"], info.get("SwapFree"), PSI
        if self.source == "cgroup":
            if self.remote:
                raise ValueError("the cgroup is this host's, the URI names another host")
            return self._cgroup()
        total, available = self._nodememstats()  # virsh says nothing of the host's swap
        return total, available, None, None

    def _pressure(self, path: Optional[str]) -> bool:
        """PSI above host_psi. The PSI file is optional (a kernel without PSI, psi=0, a container): when it
        cannot be read, pressure is unknown and is read as none. That keeps the host safe, because the
        reserve computed from the totals, which did read, still bounds every grow; reading unknown as
        pressure instead would, as fit_host treats pressure, reclaim 1 % of the host from the guests every
        cycle and grow none, for as long as the file stays unreadable (for ever on a host without PSI).
        Logged once when it becomes unreadable and once when it is back."""
        threshold = self.config.host.psi
        if threshold is None or path is None:
            return False
        try:
            reader = self.read_file if path == PSI else self.read_cgroup
            avg10 = parse_psi_some_avg10(reader(path))
        except (OSError, ValueError, Refused) as exc:
            if not self._psi_failing:
                log.warning("cannot read host PSI %s (%s); host pressure unknown, growth still kept above "
                            "the host reserve", path, " ".join(str(exc).split()), extra=about("host-read-failed"))
            self._psi_failing = True
            return False
        if self._psi_failing:
            log.info("host PSI %s readable again", path, extra=about("host-read-back"))
            self._psi_failing = False
        return avg10 is not None and avg10 > threshold

    def _nodememstats(self) -> Tuple[int, int]:
        stats = parse_nodememstats(self.virsh.nodememstats())
        return stats["total"], stats["free"] + stats.get("buffers", 0) + stats.get("cached", 0)

    def _cgroup(self) -> Tuple[int, int, Optional[int], Optional[str]]:
        """The cgroup's limit as the host's total (never above MemTotal: "max", or v1's huge number, means
        the machine's); available: limit - usage + the inactive file pages the cgroup could reclaim, never
        above the machine's MemAvailable (a limit above what the machine has free cannot be given).
        cgroup v2 (memory.max, memory.current, memory.stat inactive_file, memory.pressure) or v1
        (memory.limit_in_bytes, memory.usage_in_bytes, memory.stat total_inactive_file, /proc's PSI). Free
        swap: the machine's, less where the cgroup limits its swap (v2 memory.swap.max, v1 memory.memsw.*)."""
        base = self.config.host.cgroup.rstrip("/")
        info = parse_meminfo(self.read_file(MEMINFO))
        machine_total, machine_available = info["MemTotal"], info["MemAvailable"]
        try:
            limit_file = base + "/memory.max"
            limit_text = self.read_cgroup(limit_file)
            usage_file, inactive_key, psi = base + "/memory.current", "inactive_file", base + "/memory.pressure"
            swap_files = (base + "/memory.swap.max", base + "/memory.swap.current")
        except FileNotFoundError as exc:
            if exc.filename not in (None, limit_file):  # the cgroup itself (or a directory above) is missing
                raise
            limit_file = base + "/memory.limit_in_bytes"
            try:
                limit_text = self.read_cgroup(limit_file)
            except FileNotFoundError as again:
                if again.filename not in (None, limit_file):
                    raise
                raise ValueError(f"{base}: neither memory.max (cgroup v2) nor memory.limit_in_bytes "
                                 "(cgroup v1): not a memory cgroup") from None
            usage_file, inactive_key, psi = base + "/memory.usage_in_bytes", "total_inactive_file", PSI
            swap_files = (base + "/memory.memsw.limit_in_bytes", base + "/memory.memsw.usage_in_bytes")
        limit = _bytes_value(limit_text, limit_file)
        usage = _bytes_value(self.read_cgroup(usage_file), usage_file)
        if usage is None:
            raise ValueError(f"{usage_file}: expected a number of bytes, got 'max'")
        inactive = _stat_value(self.read_cgroup(base + "/memory.stat"), inactive_key, base + "/memory.stat")
        total = machine_total if limit is None else min(limit // 1024, machine_total)
        available = min(total - usage // 1024 + inactive // 1024, machine_available)
        return total, available, self._cgroup_swap_free(swap_files, limit, usage, info.get("SwapFree")), psi

    def _cgroup_swap_free(self, files: Tuple[str, str], limit: Optional[int], usage: int,
                          machine_kib: Optional[int]) -> Optional[int]:
        """The machine's free swap, less where the cgroup's swap limit leaves less. Without swap accounting
        (no such files) the cgroup swaps into the machine's. v1's memsw counts memory and swap together."""
        try:
            swap_limit = _bytes_value(self.read_cgroup(files[0]), files[0])
            swap_usage = _bytes_value(self.read_cgroup(files[1]), files[1])
        except FileNotFoundError:
            return machine_kib
        if swap_limit is None or swap_usage is None:
            return machine_kib
        if files[0].endswith("memsw.limit_in_bytes"):
            if limit is None:
                return machine_kib
            swap_limit, swap_usage = swap_limit - limit, swap_usage - usage
        left = max(swap_limit - swap_usage, 0) // 1024
        return left if machine_kib is None else min(left, machine_kib)
