"""HostReader: what the host has and can give, from /proc, nodememstats or a memory cgroup (v1 and v2,
real files in a temp dir read the way root reads /sys/fs/cgroup), and how a read that fails is handled:
an optional PSI file never takes the mandatory limit with it (issue 24, point 6), a host total of zero is
an error, not a host (issue 23, point 5)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from balloon2395 import PROG, config as cfg
from balloon2395.host import HostReader, read_no_symlink
from balloon2395.observation import HostMemory
from balloon2395.safefiles import Refused

MIB = 1024
GIB = 1024 * MIB
LOCAL = "qemu:///system"
MACHINE_TOTAL = 16 * GIB
MACHINE_AVAILABLE = 12 * GIB
V1_UNLIMITED = "9223372036854771712"  # what v1 prints for no limit (PAGE_COUNTER_MAX pages)


def meminfo(total: Optional[int] = MACHINE_TOTAL, available: Optional[int] = MACHINE_AVAILABLE) -> str:
    lines = ([] if total is None else [f"MemTotal:       {total} kB"]) + ["MemFree:        1000 kB"]
    return "\n".join(lines + ([] if available is None else [f"MemAvailable:   {available} kB"])) + "\n"


def psi(avg10: float) -> str:
    return (f"some avg10={avg10:.2f} avg60=0.00 avg300=0.00 total=1\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


class Files:
    """/proc as a dict: a path missing from it cannot be read (FileNotFoundError)."""

    def __init__(self, **files: str) -> None:
        self.files: Dict[str, str] = {"/proc/meminfo": meminfo()}
        self.files.update({key.replace("__", "/"): value for key, value in files.items()})

    def __call__(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]


class NodeVirsh:
    def __init__(self, text: str) -> None:
        self.text = text

    def nodememstats(self) -> str:
        return self.text


@pytest.fixture
def logged() -> Iterator[List[logging.LogRecord]]:
    """The daemon logger's records, whatever another test did to its propagation."""
    records: List[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(PROG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def messages(records: List[logging.LogRecord], level: int) -> List[str]:
    return [r.getMessage() for r in records if r.levelno == level]


def reader(files: Files, uri: str = LOCAL, virsh=None, **values) -> HostReader:
    return HostReader(cfg.build(values), virsh or NodeVirsh(""), uri, read=files)


def v2(path: Path, limit: str = str(GIB * 1024), current: int = 600 * MIB * 1024,
       inactive: int = 100 * MIB * 1024, pressure: Optional[str] = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "memory.max").write_text(limit + "\n")
    (path / "memory.current").write_text(f"{current}\n")
    (path / "memory.stat").write_text(f"anon 123\nfile 456\nactive_file 1\ninactive_file {inactive}\n"
                                      "inactive_anon 7\n")
    if pressure is not None:
        (path / "memory.pressure").write_text(pressure)
    return path


def v1(path: Path, limit: str = str(GIB * 1024), usage: int = 600 * MIB * 1024,
       inactive: int = 100 * MIB * 1024) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "memory.limit_in_bytes").write_text(limit + "\n")
    (path / "memory.usage_in_bytes").write_text(f"{usage}\n")
    # a v1 memory.stat: the cgroup's own inactive_file first, then the hierarchy's total_ (what counts)
    (path / "memory.stat").write_text(f"cache 1\nrss 2\ninactive_file 4096\nhierarchical_memory_limit 9\n"
                                      f"total_cache 1\ntotal_inactive_file {inactive}\n")
    return path


def cgroup_reader(path: Path, files: Optional[Files] = None, **values) -> HostReader:
    return reader(files or Files(), host_memory="cgroup", host_cgroup=str(path), **values)


# ---------------------------------------------------------------- the cgroup: v2 and v1

def test_v2_limit_is_the_total_and_limit_less_usage_plus_inactive_file_is_available(tmp_path):
    host = cgroup_reader(v2(tmp_path / "machine.slice")).read()
    assert host == HostMemory(total_kib=GIB, available_kib=GIB - 600 * MIB + 100 * MIB,
                              reserve_kib=cfg.Config().host_reserve_kib(GIB))


def test_v1_limit_usage_and_total_inactive_file(tmp_path):
    host = cgroup_reader(v1(tmp_path / "machine.slice")).read()
    assert host is not None
    assert (host.total_kib, host.available_kib) == (GIB, GIB - 600 * MIB + 100 * MIB)


@pytest.mark.parametrize("make,limit", [(v2, "max"), (v1, V1_UNLIMITED), (v1, str(64 * GIB * 1024)),
                                        (v2, str(MACHINE_TOTAL * 1024 + 4096))])
def test_an_unlimited_cgroup_or_one_above_the_machine_counts_as_the_machine(tmp_path, make, limit):
    host = cgroup_reader(make(tmp_path / "cg", limit=limit, inactive=0), host_reserve="2GiB").read()
    assert host is not None
    # the limit is the machine's; what the cgroup could still take is bounded by what the machine has free
    assert host.total_kib == MACHINE_TOTAL
    assert host.available_kib == min(MACHINE_TOTAL - 600 * MIB, MACHINE_AVAILABLE) == MACHINE_AVAILABLE
    assert host.reserve_kib == 2 * GIB


def test_available_is_never_above_what_the_machine_has_free(tmp_path):
    files = Files(**{"/proc/meminfo": meminfo(available=200 * MIB)})
    host = cgroup_reader(v2(tmp_path / "cg"), files).read()
    assert host is not None and (host.total_kib, host.available_kib) == (GIB, 200 * MIB)


def test_a_cgroup_over_its_limit_has_nothing_available_never_less(tmp_path):
    host = cgroup_reader(v2(tmp_path / "cg", current=GIB * 1024 + 8192, inactive=0)).read()
    assert host is not None and host.available_kib == 0


def test_v2_pressure_is_the_cgroups_own(tmp_path):
    files = Files(**{"/proc/pressure/memory": psi(0.0)})
    host = cgroup_reader(v2(tmp_path / "cg", pressure=psi(25.0)), files, host_psi=10).read()
    assert host is not None and host.pressure
    calm = cgroup_reader(v2(tmp_path / "calm", pressure=psi(1.0)), Files(**{"/proc/pressure/memory": psi(50)}),
                         host_psi=10).read()
    assert calm is not None and not calm.pressure


def test_v1_pressure_is_the_machines(tmp_path):
    files = Files(**{"/proc/pressure/memory": psi(25.0)})
    host = cgroup_reader(v1(tmp_path / "cg"), files, host_psi=10).read()
    assert host is not None and host.pressure


@pytest.mark.parametrize("name,content", [
    ("memory.max", "lots\n"),
    ("memory.max", "-1\n"),
    ("memory.max", ""),
    ("memory.current", "max\n"),
    ("memory.current", "12 34\n"),
    ("memory.stat", "anon 1\nfile 2\n"),  # no inactive_file
    ("memory.stat", "inactive_file many\n"),
    ("memory.max", "0\n"),  # a limit of 0: no host total
])
def test_garbage_in_a_cgroup_file_is_one_warning_and_no_host(tmp_path, logged, name, content):
    path = v2(tmp_path / "cg")
    (path / name).write_text(content)
    host = cgroup_reader(path)
    assert host.read() is None and host.read() is None
    warnings = messages(logged, logging.WARNING)
    assert len(warnings) == 1 and "\n" not in warnings[0] and str(path) in warnings[0], warnings


def test_binary_garbage_is_an_error_not_a_crash(tmp_path, logged):
    path = v1(tmp_path / "cg")
    (path / "memory.usage_in_bytes").write_bytes(b"\xff\xfe\x00garbage")
    assert cgroup_reader(path).read() is None
    assert len(messages(logged, logging.WARNING)) == 1


def test_unreadable_cgroup_is_logged_once_and_its_return_once(tmp_path, logged):
    path = tmp_path / "machine.slice"
    host = cgroup_reader(path)
    assert host.read() is None and host.read() is None  # not there yet
    assert messages(logged, logging.WARNING) == [
        f"cannot read host memory (cgroup {path}): [Errno 2] No such file or directory: '{path}'; "
        "growth is not limited by the host"]
    v2(path)
    assert host.read() is not None and host.read() is not None
    assert messages(logged, logging.INFO) == [f"host memory readable again (cgroup {path})"]


def test_a_directory_without_memory_files_is_not_a_memory_cgroup(tmp_path, logged):
    (tmp_path / "cpu.slice").mkdir()
    assert cgroup_reader(tmp_path / "cpu.slice").read() is None
    assert "not a memory cgroup" in messages(logged, logging.WARNING)[0]


def test_a_cgroup_file_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, logged):
    path = v2(tmp_path / "cg")
    (path / "memory.current").unlink()
    os.mkfifo(path / "memory.current")  # opening a FIFO to read blocks until a writer comes
    assert cgroup_reader(path).read() is None
    assert "is a FIFO, not a regular file" in messages(logged, logging.WARNING)[0]
    (path / "memory.current").unlink()
    (path / "memory.current").mkdir()
    with pytest.raises(Refused, match="a directory"):
        read_no_symlink(str(path / "memory.current"))


@pytest.mark.parametrize("where", ["cgroup", "parent", "file"])
def test_a_symlink_on_the_cgroup_path_is_refused(tmp_path, logged, where):
    real = v2(tmp_path / "real" / "machine.slice")
    if where == "cgroup":  # host_cgroup itself a link to the real cgroup
        (tmp_path / "link.slice").symlink_to(real)
        path = tmp_path / "link.slice"
    elif where == "parent":  # a directory above it
        (tmp_path / "linked").symlink_to(tmp_path / "real")
        path = tmp_path / "linked" / "machine.slice"
    else:  # one of its files pointing at a file with other figures
        path = real
        fake = v2(tmp_path / "other", limit="max")
        (path / "memory.max").unlink()
        (path / "memory.max").symlink_to(fake / "memory.max")
    assert cgroup_reader(path).read() is None
    warnings = messages(logged, logging.WARNING)
    assert len(warnings) == 1 and "is a symlink: refused" in warnings[0], warnings


def test_the_real_path_reads(tmp_path):
    path = v1(tmp_path / "a" / "b" / "c")
    assert read_no_symlink(str(path / "memory.usage_in_bytes")) == f"{600 * MIB * 1024}\n"
    with pytest.raises(Refused):
        read_no_symlink("relative/memory.max")
    with pytest.raises(Refused):
        read_no_symlink(str(path) + "/../c/memory.max")


def test_the_cgroup_is_this_hosts_not_a_remote_uris(tmp_path, logged):
    host = reader(Files(), uri="qemu+ssh://host2/system", host_memory="cgroup",
                  host_cgroup=str(v2(tmp_path / "cg")))
    assert host.read() is None
    assert "URI names another host" in messages(logged, logging.WARNING)[0]


# ---------------------------------------------------------------- the settings

def test_host_cgroup_defaults_to_machine_slice_and_is_validated():
    assert cfg.Config().host.cgroup == "/sys/fs/cgroup/machine.slice"
    assert cfg.build({"host_cgroup": "/sys/fs/cgroup/memory/machine.slice/"}).host.cgroup == \
        "/sys/fs/cgroup/memory/machine.slice"
    assert cfg.build({"host_memory": "cgroup"}).host.memory == "cgroup"
    for bad, words in [("machine.slice", "absolute path"), ("/sys/fs/cgroup/../etc", ". or .."),
                       ("/sys/./fs", ". or .."), ("", "non-empty"), (5, "non-empty"), ("/sys/\nx", "control")]:
        with pytest.raises(cfg.ConfigError, match=words) as caught:
            cfg.build({"host_cgroup": bad})
        assert str(caught.value).startswith("host_cgroup")
    with pytest.raises(cfg.ConfigError, match=r"^--host-cgroup: expected an absolute"):
        cfg.build({"host_cgroup": "x"}, flags=("host_cgroup",))


# ---------------------------------------------------------------- an optional signal, a mandatory limit

def test_unreadable_psi_keeps_the_totals_and_the_reserve(logged):
    files = Files()  # no /proc/pressure/memory: a kernel without PSI, or psi=0
    host = reader(files, host_memory="local", host_psi=10, host_reserve="2GiB")
    first = host.read()
    # The old reader returned None here: growth unlimited by the host because an optional file was missing.
    assert first == HostMemory(MACHINE_TOTAL, MACHINE_AVAILABLE, 2 * GIB, pressure=False)
    assert host.read() == first
    assert messages(logged, logging.WARNING) == [
        "cannot read host PSI /proc/pressure/memory ([Errno 2] No such file or directory: "
        "'/proc/pressure/memory'); host pressure unknown, growth still kept above the host reserve"]
    files.files["/proc/pressure/memory"] = psi(30.0)
    assert host.read() == HostMemory(MACHINE_TOTAL, MACHINE_AVAILABLE, 2 * GIB, pressure=True)
    assert host.read() is not None
    files.files["/proc/pressure/memory"] = "garbage avg10=x\nsome avg10=nan-ish\n"
    assert host.read() == first
    assert len(messages(logged, logging.WARNING)) == 2
    assert messages(logged, logging.INFO) == ["host PSI /proc/pressure/memory readable again"]


def test_unreadable_cgroup_psi_keeps_the_cgroups_totals(tmp_path):
    host = cgroup_reader(v2(tmp_path / "cg"), host_psi=10).read()  # no memory.pressure in the cgroup
    assert host is not None and host.total_kib == GIB and not host.pressure


@pytest.mark.parametrize("text", [meminfo(total=0), meminfo(total=None), meminfo(available=None)])
def test_a_zero_or_missing_total_is_an_error_reading_the_host(logged, text):
    host = reader(Files(**{"/proc/meminfo": text}), host_memory="local")
    # The old reader returned HostMemory(total_kib=0, ...) for MemTotal 0: peers divide by the total.
    assert host.read() is None and host.read() is None
    warnings = messages(logged, logging.WARNING)
    assert len(warnings) == 1 and "\n" not in warnings[0] and warnings[0].startswith("cannot read host memory (local)")


def test_a_zero_nodememstats_total_is_an_error_too(logged):
    virsh = NodeVirsh("total  :          0 KiB\nfree   :     100 KiB\n")
    assert reader(Files(), uri="qemu+ssh://h/system", virsh=virsh).read() is None
    assert "host total memory is 0 KiB" in messages(logged, logging.WARNING)[0]
    virsh.text = "total  :   16000000 KiB\nfree   :    8000000 KiB\nbuffers:     1000 KiB\ncached :    2000 KiB\n"
    host = reader(Files(), uri="qemu+ssh://h/system", virsh=virsh).read()
    assert host is not None and (host.total_kib, host.available_kib) == (16000000, 8003000)


def test_off_reads_nothing():
    assert reader(Files(), host_memory="off").read() is None


# ---------------------------------------------------------------- the host's swap: whether out of RAM it swaps or kills

def with_swap(free_kib: int) -> Files:
    return Files(**{"/proc/meminfo": meminfo() + f"SwapTotal:      {8 * GIB} kB\nSwapFree:       {free_kib} kB\n"})


def test_a_local_hosts_free_swap_is_meminfos():
    host = reader(with_swap(3 * GIB)).read()
    assert host is not None and host.swap_free_kib == 3 * GIB


def test_a_local_host_without_a_swapfree_line_has_its_swap_unknown_and_cannot_swap():
    host = reader(Files()).read()
    assert host is not None and host.swap_free_kib is None and not host.can_swap


def test_through_nodememstats_the_swap_is_unknown():
    text = (f"total  :             {MACHINE_TOTAL} KiB\nfree   :              {GIB} KiB\n"
            "buffers:                    0 KiB\ncached :                    0 KiB\n")
    host = reader(Files(), uri="qemu+ssh://other/system", virsh=NodeVirsh(text)).read()
    assert host is not None and host.swap_free_kib is None and not host.can_swap


@pytest.mark.parametrize("swap_max,swap_current,expected", [
    ("max", 0, 3 * GIB),  # no swap limit: the machine's
    (str(1 * GIB * 1024), 256 * MIB * 1024, 768 * MIB),  # the cgroup's limit leaves less
    ("0", 0, 0),  # no swap for this cgroup, whatever the machine has
])
def test_a_v2_cgroups_swap_is_the_machines_less_its_swap_limit(tmp_path, swap_max, swap_current, expected):
    path = v2(tmp_path / "cg")
    (path / "memory.swap.max").write_text(swap_max + "\n")
    (path / "memory.swap.current").write_text(f"{swap_current}\n")
    host = cgroup_reader(path, with_swap(3 * GIB)).read()
    assert host is not None and host.swap_free_kib == expected


def test_a_v1_cgroups_memsw_counts_memory_and_swap_together(tmp_path):
    # limit 1 GiB of memory, 1.5 GiB of memory + swap: 512 MiB of swap, 100 MiB of it used
    path = v1(tmp_path / "cg")
    (path / "memory.memsw.limit_in_bytes").write_text(f"{1536 * MIB * 1024}\n")
    (path / "memory.memsw.usage_in_bytes").write_text(f"{(600 + 100) * MIB * 1024}\n")
    host = cgroup_reader(path, with_swap(3 * GIB)).read()
    assert host is not None and host.swap_free_kib == 412 * MIB


def test_a_cgroup_without_swap_accounting_swaps_into_the_machines(tmp_path):
    host = cgroup_reader(v1(tmp_path / "cg"), with_swap(3 * GIB)).read()
    assert host is not None and host.swap_free_kib == 3 * GIB


def test_garbage_in_a_swap_file_is_one_warning_and_no_host(tmp_path, logged):
    path = v2(tmp_path / "cg")
    (path / "memory.swap.max").write_text("lots\n")
    (path / "memory.swap.current").write_text("0\n")
    assert cgroup_reader(path, with_swap(3 * GIB)).read() is None
    assert len(messages(logged, logging.WARNING)) == 1
