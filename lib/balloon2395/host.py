"""Observing the host: how much memory it has and can still give (local /proc, or virsh
nodememstats for a remote connection), and whether PSI says tasks already stall."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional
from urllib.parse import urlsplit

from . import PROG
from .config import Config
from .virsh import VirshCommands, VirshError
from .virsh_output import VirshOutputError, parse_nodememstats

log = logging.getLogger(PROG)


@dataclass(frozen=True)
class HostMemory:
    """The host's side: what it has, what it can still give, what it keeps for itself."""

    total_kib: int
    available_kib: int
    reserve_kib: int
    pressure: bool = False  # PSI says tasks already stall on memory

    @property
    def spare_kib(self) -> int:
        return self.available_kib - self.reserve_kib


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


class HostReader:
    def __init__(self, config: Config, virsh: VirshCommands, uri: str, read: Callable[[str], str] = _read) -> None:
        source = config.host_memory
        if source == "auto":
            source = "virsh" if is_remote(uri) else "local"
        self.source, self.config, self.virsh, self.read_file = source, config, virsh, read
        self._failing = False

    def read(self) -> Optional[HostMemory]:
        """None when host memory is not watched or cannot be read (then nothing limits growth)."""
        if self.source == "off":
            return None
        try:
            total, available = self._local() if self.source == "local" else self._nodememstats()
            psi = self.config.host_psi
            pressure = self._psi(psi) if psi is not None and self.source == "local" else False
        except (OSError, ValueError, KeyError, VirshError, VirshOutputError) as exc:
            if not self._failing:
                log.warning("cannot read host memory (%s): %s; growth is not limited by the host",
                            self.source, getattr(exc, "message", exc))
            self._failing = True
            return None
        if self._failing:
            log.info("host memory readable again")
            self._failing = False
        return HostMemory(total, available, self.config.host_reserve_kib(total), pressure)

    def _local(self):
        info = parse_meminfo(self.read_file("/proc/meminfo"))
        return info["MemTotal"], info["MemAvailable"]

    def _nodememstats(self):
        stats = parse_nodememstats(self.virsh.nodememstats())
        return stats["total"], stats["free"] + stats.get("buffers", 0) + stats.get("cached", 0)

    def _psi(self, threshold: float) -> bool:
        avg10 = parse_psi_some_avg10(self.read_file("/proc/pressure/memory"))
        return avg10 is not None and avg10 > threshold
