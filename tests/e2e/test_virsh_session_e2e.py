"""The virsh session against real virsh, libvirt and guests: names with a space, a quote and
non-ASCII, an error in the middle of a session, a virsh killed or stopped, and libvirtd going away
(a private session libvirtd, never the system one)."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from balloon2395.lifetime import READ_LINE, parse_running
from balloon2395.virsh.commands import Virsh, VirshError, VirshTimeout
from balloon2395.virsh.session import VirshSession
from balloon2395_testkit.virsh_cli import URI
from balloon2395_testkit.waiting import wait_for

MIB = 1024
WORDS = ["o'brien", 'say "hi"', "semi;colon x", "#hash", "back\\slash", "café é1", "$HOME ~ *", "a  b", "x" * 200]


def test_a_session_against_real_virsh(guest_factory, e2e_report):
    quote = guest_factory.create("o'brien é", current_mib=256, max_mib=512)
    session = VirshSession("virsh", URI, timeout=30)
    read = parse_running(session.run_line(READ_LINE))
    assert quote.name in {s.name for s in read.stats} and read.lifetimes[quote.name][0] == quote.uuid
    assert read.conflicts == {}
    assert session.dumpxml(quote.name) == Virsh("virsh", URI).dumpxml(quote.name)
    with pytest.raises(VirshError) as gone:  # an error in the middle: the session goes on
        session.dommemstat(quote.name + " not")
    assert gone.value.domain_gone and gone.value.message == f"error: failed to get domain '{quote.name} not'"
    session.setmem(quote.uuid, 240 * MIB)
    quote.wait_actual(240 * MIB)
    for word in WORDS:  # virsh's echo says back what its parser made of our quoting
        assert session.run("echo", word) == word + "\n"
    assert session.calls == 1
    started = time.perf_counter()
    for _ in range(20):
        session.run_line(READ_LINE)
    e2e_report(f"a cycle's read in a session: {(time.perf_counter() - started) / 20 * 1000:.1f} ms wall")
    session.close()


def test_a_killed_or_stopped_virsh_costs_at_most_one_call(guest_factory):
    guest = guest_factory.create("victim", current_mib=256, max_mib=512)
    session = VirshSession("virsh", URI, timeout=3)
    assert guest.name in {s.name for s in session.domstats_balloon()}
    os.kill(session._proc.pid, signal.SIGKILL)
    time.sleep(0.3)
    assert guest.name in {s.name for s in session.domstats_balloon()}  # found dead before use: no error
    os.kill(session._proc.pid, signal.SIGSTOP)  # hangs: killed at the timeout
    with pytest.raises(VirshTimeout):
        session.domstats_balloon()
    assert guest.name in {s.name for s in session.domstats_balloon()}
    assert session.calls == 3
    session.close()


@pytest.fixture
def private_libvirtd():
    """A virsh wrapper that runs as `nobody` against qemu:///session: libvirt starts a session
    libvirtd for it, ours to kill. Yields (virsh path, function giving that libvirtd's pid)."""
    if shutil.which("runuser") is None:
        pytest.skip("runuser is needed to run virsh as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    top = Path(tempfile.mkdtemp(prefix="b2395e2e-nobody-"))  # pytest's tmp_path is closed to other users
    os.chmod(top, 0o755)
    home = top / "home"
    (home / "run").mkdir(parents=True, mode=0o700)
    for path in (home, home / "run"):
        shutil.chown(path, "nobody")
    wrapper = top / "virsh-as-nobody"
    wrapper.write_text(f"""#!/bin/sh
[ "$1" = -c ] && shift 2
exec runuser -u nobody -- env HOME={home} XDG_RUNTIME_DIR={home / 'run'} LC_ALL=C TERM=dumb VIRSH_HISTSIZE=0 \\
    virsh -c qemu:///session "$@"
""")
    wrapper.chmod(0o755)

    def ours() -> list:
        marker = f"XDG_RUNTIME_DIR={home / 'run'}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if (entry.name.isdigit() and (entry / "comm").read_text().strip() == "libvirtd"
                        and marker in (entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    yield str(wrapper), ours
    for pid in ours():
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(top, ignore_errors=True)


def test_libvirtd_going_away_renews_the_session(private_libvirtd, caplog):
    wrapper, libvirtd_pids = private_libvirtd
    session = VirshSession(wrapper, URI, timeout=30)
    assert session.run("list", "--name") == "\n"
    first = wait_for(libvirtd_pids, 10, what="the session libvirtd")
    for pid in first:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not set(first) & set(libvirtd_pids()), 10, what="the session libvirtd to go")
    time.sleep(0.5)  # virsh notes the disconnection on its own
    with caplog.at_level(logging.INFO, logger="balloon-2395"):
        assert session.run("list", "--name") == "\n"  # virsh reconnected: the call still answers
        assert session.run("list", "--name") == "\n"
    assert "Disconnected from qemu:///session" in caplog.text and "starting a new session" in caplog.text
    assert session.calls == 2
    session.close()
