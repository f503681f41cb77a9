"""Root never writes through a path another user controls: the log directory and the textfile metrics'
directory (the lock, state and journal files: tests/test_lock.py; the config: tests/test_security.py and
tests/test_service.py) must not be reachable through another user's symlink or directory."""

from __future__ import annotations

import os

import pytest

from balloon2395.safefiles import unsafe_dir
from conftest import domain

OTHER = 1000  # a user who is not root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the rule is for a daemon running as root")


def _others(tmp_path):
    """A directory of another user's, and a root-owned target it could point the daemon at."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    os.lchown(link, OTHER, OTHER)
    # root's own symlink, in their directory: they can replace it with one of theirs at any time
    (theirs / "roots-link").symlink_to(target)
    return theirs, link, target


def test_a_directory_of_roots_own_is_trusted(tmp_path):
    assert unsafe_dir(str(tmp_path / "logs")) is None  # not there yet: its root-owned parent counts


@pytest.mark.parametrize("which", ["theirs", "inside-theirs", "link", "below-link", "roots-link-in-theirs",
                                   "below-roots-link-in-theirs"])
def test_a_directory_another_user_could_swap_is_refused(tmp_path, which):
    theirs, link, _ = _others(tmp_path)
    path = {"theirs": theirs, "inside-theirs": theirs / "logs", "link": link, "below-link": link / "logs",
            "roots-link-in-theirs": theirs / "roots-link",
            "below-roots-link-in-theirs": theirs / "roots-link" / "logs"}[which]
    problem = unsafe_dir(str(path))
    assert problem and problem.startswith("refused as root: ") and "uid 1000" in problem


@pytest.mark.parametrize("flag", ["--logdir", "--metrics-textfile"])
@pytest.mark.parametrize("which", ["theirs", "link", "roots-link-in-theirs"])
def test_the_daemon_refuses_to_log_or_write_metrics_there(fake_host, tmp_path, flag, which):
    pytest.importorskip("prometheus_client")
    theirs, link, target = _others(tmp_path)
    directory = {"theirs": theirs, "link": link, "roots-link-in-theirs": theirs / "roots-link"}[which]
    value = str(directory / ("balloon.prom" if flag == "--metrics-textfile" else "logs"))
    host = fake_host(domain("web1", usable_mib=370))
    result = host.run("--once", flag, value)
    assert result.returncode == 2, result.stderr
    assert "refused as root" in result.stderr and result.stderr.count("\n") == 1
    assert os.listdir(target) == [] and host.setmems() == []
    assert not (theirs / "logs").exists()
