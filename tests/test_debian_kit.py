"""The Debian guest's kit without a hypervisor (issue 16, point 1): the image's recipe and cache
(lib/balloon2395_testkit/debian_image.py), the domain it defines (debian_guest.py), and the workload
agent the guest runs (tests/e2e/debian/agent.py) answering in the host's wire format."""

from __future__ import annotations

import importlib.util
import os
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

import pytest

from balloon2395_testkit import debian_image
from balloon2395_testkit.debian_guest import DebianGuest, DebianGuestFactory, numbers
from balloon2395_testkit.debian_image import CannotBuild, DebianImage, ImageNotReady
from balloon2395_testkit.guest_channel import ReplyReader
from balloon2395_testkit.guests import GuestSpec

DEBIAN_SPEC = GuestSpec(**DebianGuest.SPEC_DEFAULTS)

AGENT_PY = Path(__file__).resolve().parent / "e2e" / "debian" / "agent.py"
MODULES_DEP = """kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
"""


def load_agent():
    spec = importlib.util.spec_from_file_location("b2395_debian_agent", AGENT_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agent_mod = load_agent()


def reply(agent, line: str):
    """The agent's answer to `line` (sequence 7), read back with the host's parser."""
    reader = ReplyReader()
    reader.feed(agent.answer(f"7 {line}"))
    return reader.reply(7)


def built_image(root: Path, name: str) -> DebianImage:
    image = DebianImage(root / name)
    image.directory.mkdir(parents=True)
    for path in (image.rootfs, image.kernel, image.initrd, image.manifest_path):
        path.write_text("{}")
    return image


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --------------------------------------------------------------------- the recipe and the cache
def test_recipe_hash_follows_the_recipe_files_bytes(tmp_path):
    a, b = tmp_path / "packages", tmp_path / "customize.sh"
    a.write_text("redis-server\n")
    b.write_text("echo\n")
    first = debian_image.recipe_hash([a, b])
    assert debian_image.recipe_hash([a, b]) == first
    a.write_text("redis-server\npostgresql\n")
    assert debian_image.recipe_hash([a, b]) != first


def test_recipe_hash_follows_the_format(tmp_path):
    a = tmp_path / "packages"
    a.write_text("redis-server\n")
    assert debian_image.recipe_hash([a], fmt=1) != debian_image.recipe_hash([a], fmt=2)


def test_recipe_takes_in_the_guest_files_and_the_memory_hog():
    names = {p.name for p in debian_image.recipe_files()}
    assert {"packages", "dpkg.cfg", "customize.sh", "agent.py", "b2395-agent.service", "initrd-init.sh",
            "memhog.c"} <= names


def test_find_image_returns_the_current_recipes_image(tmp_path):
    image = built_image(tmp_path, debian_image.recipe_hash())
    assert debian_image.find_image(tmp_path) == image


def test_find_image_refuses_an_interrupted_build(tmp_path):
    image = built_image(tmp_path, debian_image.recipe_hash())
    image.manifest_path.unlink()  # written last
    with pytest.raises(ImageNotReady, match="no Debian guest image"):
        debian_image.find_image(tmp_path)


def test_find_image_names_an_image_of_an_older_recipe(tmp_path):
    built_image(tmp_path, "0123456789abcdef")
    with pytest.raises(ImageNotReady, match="0123456789abcdef.*older recipe.*debian-image"):
        debian_image.find_image(tmp_path)


def test_cache_root_moves_with_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BALLOON_DEBIAN_CACHE", str(tmp_path))
    assert debian_image.cache_root() == tmp_path
    monkeypatch.delenv("BALLOON_DEBIAN_CACHE")
    assert debian_image.cache_root() == debian_image.ROOT / ".cache" / "debian-guest"


# --------------------------------------------------------------------- Debian's archive and the tools
def test_sources_come_from_the_archive_apt_uses():
    lines = debian_image.debian_sources("http://a.example/debian/ trixie\nhttp://a.example/debian/ trixie-updates\n"
                                        "http://s.example/debian-security/ trixie-security\n")
    assert lines == ["deb http://a.example/debian/ bookworm main", "deb http://a.example/debian/ bookworm-updates main",
                     "deb http://s.example/debian-security/ bookworm-security main"]


def test_sources_without_a_security_archive_leave_it_out():
    assert len(debian_image.debian_sources("http://a.example/debian/ bookworm\n")) == 2


def test_no_debian_archive_in_apt_cannot_build():
    with pytest.raises(CannotBuild, match="no Debian archive"):
        debian_image.debian_sources("http://s.example/debian-security/ bookworm-security\n")


def test_mmdebstrap_installs_the_recipes_packages_without_recommends():
    argv = debian_image.mmdebstrap_argv(Path("/t/tree"), Path("/t/sources.list"))
    assert argv[:2] == ["mmdebstrap", "--variant=essential"]
    included = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert {"systemd-sysv", "redis-server", "linux-image-cloud-amd64"} <= set(included)
    assert "#" not in "".join(included)
    assert f"--dpkgopt={debian_image.RECIPE / 'dpkg.cfg'}" in argv
    assert argv[-3:] == ["bookworm", "/t/tree", "/t/sources.list"]


def test_network_failures_are_told_from_other_failures():
    assert debian_image.network_failure("I: x\nErr:1 http://a b InRelease\n  Temporary failure resolving 'a'\n") \
        == "Temporary failure resolving 'a'"
    assert debian_image.network_failure("E: Unable to locate package nosuch\n") is None


def mmdebstrap_failing_with(monkeypatch, log_text: str) -> None:
    """mmdebstrap, as bootstrap() runs it, exits 1 having logged `log_text`."""
    monkeypatch.setattr(debian_image, "host_sources", lambda: ["deb http://a.example/debian bookworm main"])

    def fails(argv, log, **kw):
        log.write_text(log_text)
        raise debian_image.HarnessError("mmdebstrap exited 1")
    monkeypatch.setattr(debian_image, "checked", fails)


def test_unreachable_archive_cannot_build(tmp_path, monkeypatch):
    mmdebstrap_failing_with(monkeypatch, "W: Failed to fetch http://a.example/debian/dists/bookworm/InRelease\n")
    with pytest.raises(CannotBuild, match="cannot be reached: W: Failed to fetch"):
        debian_image.bootstrap(tmp_path, tmp_path / "tree", tmp_path / "log")


def test_other_mmdebstrap_failures_fail_the_build(tmp_path, monkeypatch):
    mmdebstrap_failing_with(monkeypatch, "E: Unable to locate package nosuch\n")
    with pytest.raises(debian_image.HarnessError) as caught:
        debian_image.bootstrap(tmp_path, tmp_path / "tree", tmp_path / "log")
    assert not isinstance(caught.value, CannotBuild)


def test_a_user_that_is_not_root_exits_77(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert debian_image.main([]) == 77
    assert "SKIP: building the Debian guest image needs root" in capsys.readouterr().err


def test_the_file_system_is_made_from_the_folder_without_a_mount():
    argv = debian_image.mkfs_argv(Path("/t/tree"), Path("/t/rootfs.ext4"), 900)
    assert argv[0] == "mkfs.ext4" and argv[argv.index("-d") + 1] == "/t/tree"
    assert argv[-2:] == ["/t/rootfs.ext4", "900M"]


def test_the_file_system_leaves_room_beyond_the_tree():
    assert debian_image.image_size_mib(800 * 1024) >= 800 + debian_image.FREE_MIB


# --------------------------------------------------------------------- the initrd
def test_initrd_modules_load_dependencies_first_each_once():
    order = debian_image.load_order(MODULES_DEP, ["virtio_pci", "virtio_blk"])
    names = [Path(p).name for p in order]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko",
                     "virtio_pci.ko", "virtio_blk.ko"]


def test_initrd_refuses_a_module_the_kernel_lacks():
    with pytest.raises(debian_image.HarnessError, match="virtio_nosuch"):
        debian_image.load_order(MODULES_DEP, ["virtio_nosuch"])


# --------------------------------------------------------------------- the domain
@pytest.fixture
def image(tmp_path) -> DebianImage:
    return built_image(tmp_path / "cache", "0123456789abcdef")


def test_guest_boots_the_images_kernel_with_root_and_swap_disks(tmp_path, image):
    g = DebianGuest("b2395e2e-deb1-x", tmp_path / "g", image=image, swap_mib=128)
    xml = g.xml()
    assert f"<kernel>{image.kernel}</kernel>" in xml and f"<initrd>{image.initrd}</initrd>" in xml
    assert "root=/dev/vda rw" in xml and "sysctl.vm.swappiness=60" in xml
    disks = [(d.find("driver").get("type"), d.find("source").get("file"), d.find("target").get("dev"))
             for d in ElementTree.fromstring(xml).iter("disk")]
    assert disks == [("qcow2", str(tmp_path / "g" / "root.qcow2"), "vda"),
                     ("raw", str(tmp_path / "g" / "swap.raw"), "vdb")]
    assert "<stats period='1'/>" in xml and "org.balloon2395.ctl" in xml


def test_guest_without_swap_has_no_swap_disk_and_masks_its_unit(tmp_path, image):
    xml = DebianGuest("b2395e2e-deb1-x", tmp_path / "g", image=image, swap_mib=0).xml()
    assert "vdb" not in xml.replace("systemd.mask=dev-vdb.swap", "") and "systemd.mask=dev-vdb.swap" in xml


def test_guest_without_balloon_driver_blacklists_the_module(tmp_path, image):
    g = DebianGuest("b2395e2e-deb1-x", tmp_path / "g", replace(DEBIAN_SPEC, balloon_driver=False), image=image)
    assert "module_blacklist=virtio_balloon" in g.cmdline
    assert "module_blacklist" not in DebianGuest("b2395e2e-deb1-y", tmp_path / "h", image=image).cmdline


def test_guest_keeps_the_devices_it_is_given(tmp_path, image):
    xml = DebianGuest("b2395e2e-deb1-x", tmp_path / "g", replace(DEBIAN_SPEC, devices_xml="<rng model='virtio'/>"),
                      image=image).xml()
    assert "<rng model='virtio'/>" in xml and "root.qcow2" in xml


def test_factory_names_debian_guests_apart_and_gives_them_its_image(image):
    with DebianGuestFactory(image) as factory:
        g = factory.guest("web")
        assert isinstance(g, DebianGuest) and g.image == image
        assert g.name.startswith("b2395e2e-deb") and g.name.endswith("-web")


def test_reply_numbers_keep_the_lines_that_are_numbers():
    assert numbers(["used_memory_kib 12", "swap /dev/vdb 4 0", "pswpin x", "pswpout 3"]) \
        == {"used_memory_kib": 12, "pswpout": 3}


# --------------------------------------------------------------------- the agent
@pytest.fixture
def proc(tmp_path) -> Path:
    p = tmp_path / "proc"
    p.mkdir()
    (p / "meminfo").write_text("MemTotal:        1000 kB\nSwapTotal:        262140 kB\nSwapFree:      200000 kB\n")
    (p / "vmstat").write_text("pswpin 5\npswpout 9\noom_kill 2\n")
    (p / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n/dev/vdb partition\t262140\t62140\t-2\n")
    (p / "mounts").write_text("")
    return p


@pytest.fixture
def agent(tmp_path, proc):
    return agent_mod.Agent(proc=str(proc), cache_dir=str(tmp_path / "cache"), run_dir=str(tmp_path / "run"),
                           memhog=str(tmp_path / "memhog"), redis_cli=str(tmp_path / "redis-cli"))


def test_agent_answers_in_the_hosts_framing(agent):
    r = reply(agent, "ping")
    assert (r.rc, r.lines) == (0, ["pong"])


def test_agent_ignores_a_line_without_sequence_number(agent):
    assert agent.answer("") == b""


def test_agent_names_an_unknown_command(agent):
    r = reply(agent, "fly 3")
    assert (r.rc, r.lines) == (127, ["unknown command: fly"])


def test_agent_gives_usage_for_missing_arguments(agent):
    r = reply(agent, "hog onlyname")
    assert r.rc == 2 and r.lines == ["usage: hog NAME MIB"]


def test_agent_refuses_a_size_that_is_not_a_number(agent):
    r = reply(agent, "cache lots")
    assert r.rc == 2 and "not a number of MiB" in r.text


def test_agent_survives_a_failing_command(agent):
    r = reply(agent, "meminfo")
    assert r.rc == 0
    os.remove(Path(agent.proc) / "meminfo")
    r = reply(agent, "meminfo")
    assert r.rc == 1 and "FileNotFoundError" in r.text
    assert reply(agent, "ping").lines == ["pong"]


def test_agent_reports_swap_figures(agent):
    r = reply(agent, "swap")
    assert r.lines == ["swap /dev/vdb 262140 62140", "pswpin 5", "pswpout 9", "SwapTotal 262140", "SwapFree 200000"]


def test_agent_sh_runs_the_rest_of_the_line_in_bash(agent):
    r = reply(agent, "sh echo $((6 * 7)); exit 3")
    assert (r.rc, r.lines) == (3, ["42"])


def test_agent_reads_files_into_the_cache(agent, tmp_path):
    (tmp_path / "cache").mkdir()
    for name in ("file-01", "file-02"):
        (tmp_path / "cache" / name).write_bytes(b"x" * (2 << 20))
    r = reply(agent, "cache 3")
    assert r.rc == 0 and r.lines[0].startswith("read 3 MiB in ")


def test_agent_says_when_the_image_has_fewer_files_than_asked(agent, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "file-01").write_bytes(b"x" * (1 << 20))
    r = reply(agent, "cache 4")
    assert r.rc == 1 and r.lines[1] == "the image has only 1 MiB of files"


def test_agent_fills_and_empties_its_tmpfs(agent, tmp_path, proc):
    tmpfs = tmp_path / "run" / "tmpfs"
    tmpfs.mkdir(parents=True)
    (proc / "mounts").write_text(f"b2395-tmpfs {tmpfs} tmpfs rw 0 0\n")  # mounted already
    assert reply(agent, "tmpfs 2").lines == ["tmpfs 2 MiB"]
    assert reply(agent, "tmpfs 1").lines == ["tmpfs 3 MiB"]
    assert reply(agent, "tmpfs_free").lines == ["tmpfs 0 MiB"] and os.listdir(tmpfs) == []


def test_agent_starts_a_hog_with_its_files_and_options(agent, tmp_path):
    executable(tmp_path / "memhog", "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\necho pid 1 mib 5\n")
    r = reply(agent, "ramp web 5 50 200")
    hogs = tmp_path / "run" / "hogs"
    assert (r.rc, r.lines) == (0, ["pid 1 mib 5"])
    assert (tmp_path / "args").read_text() == f"-d -p {hogs / 'web.pid'} -s {hogs / 'web.status'} -r 5 -m 50 -i 200 5\n"


def test_agent_hogs_leave_the_agents_oom_exemption_behind(tmp_path):
    """The agent is exempt from the OOM killer; the memory it holds for the host must not be. (Run in a
    process of its own whose score is raised: lowering it back needs no privilege.)"""
    executable(tmp_path / "memhog", "#!/bin/sh\necho score $(cat /proc/self/oom_score_adj)\n")
    code = ("import importlib.util, sys\n"
            "open('/proc/self/oom_score_adj', 'w').write('500')\n"
            f"spec = importlib.util.spec_from_file_location('agent', {str(AGENT_PY)!r})\n"
            "agent = importlib.util.module_from_spec(spec); spec.loader.exec_module(agent)\n"
            f"a = agent.Agent(run_dir={str(tmp_path / 'run')!r}, memhog={str(tmp_path / 'memhog')!r})\n"
            "sys.stdout.write(a.answer('1 hog web 5').decode())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1] == "score 0"


def test_agent_refuses_a_hog_name_with_a_path_in_it(agent):
    r = reply(agent, "hog ../x 5")
    assert r.rc == 2 and "bad hog name" in r.text


def test_agent_tells_a_dead_hog_from_a_live_one(agent, tmp_path, proc):
    hogs = tmp_path / "run" / "hogs"
    hogs.mkdir(parents=True)
    (hogs / "a.pid").write_text("41\n")
    (hogs / "a.status").write_text("30\n")
    (hogs / "b.pid").write_text("42\n")
    (proc / "41").mkdir()
    (proc / "41" / "stat").write_text("41 (memhog) S 1 41\n")
    (proc / "42").mkdir()
    (proc / "42" / "stat").write_text("42 (memhog) Z 1 42\n")
    assert reply(agent, "hogs").lines == ["a alive 30", "b dead 0"]


def test_agent_loads_redis_until_it_holds_the_size_asked(agent, tmp_path):
    # a redis-cli whose used_memory grows by what each DEBUG POPULATE asks
    state = tmp_path / "used"
    state.write_text(str(1 << 20))
    executable(tmp_path / "redis-cli", f"""#!/bin/sh
used=$(cat {state})
case "$1" in
  INFO) printf 'used_memory:%s\\r\\nused_memory_rss:%s\\r\\n' "$used" "$((used + 1048576))" ;;
  DEBUG) echo $((used + $3 * 3000)) > {state}; echo OK ;;
esac
""")
    r = reply(agent, "redis 10")
    got = numbers(r.lines)
    assert r.rc == 0 and 9 * 1024 <= got["used_memory_kib"] <= 11 * 1024
    assert got["used_memory_rss_kib"] == got["used_memory_kib"] + 1024


def test_agent_reports_a_redis_error(agent, tmp_path):
    executable(tmp_path / "redis-cli", "#!/bin/sh\necho 'ERR DEBUG command not allowed'\n")
    r = reply(agent, "redis 10")
    assert r.rc == 1 and "ERR DEBUG command not allowed" in r.text


def test_agent_serves_the_port_one_command_after_the_other(agent):
    host, guest = socket.socketpair()
    serving = threading.Event()
    serving.set()
    server = threading.Thread(target=agent_mod.serve, args=(agent, guest.fileno(), serving.is_set), daemon=True)
    server.start()
    host.sendall(b"1 ping\r\n2 swap\n")
    host.settimeout(10)
    reader, got = ReplyReader(), []
    while len(got) < 2:
        answer = reader.reply(len(got) + 1)
        if answer:
            got.append(answer)
        else:
            reader.feed(host.recv(4096))
    serving.clear()
    host.close()  # the agent reads nothing: it stops as told
    server.join(timeout=10)
    guest.close()
    assert got[0].lines == ["pong"] and got[1].lines[1] == "pswpin 5"
    assert not server.is_alive()
