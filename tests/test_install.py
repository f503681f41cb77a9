"""install.sh --systemd / --uninstall under BALLOON_ROOT (never the real /etc), and the unit itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, domain


def _checkout(path):
    """A copy of the checkout's files install.sh uses, beside a .venv whose pip finds nothing to do:
    what --systemd and --uninstall do is the same, without a real pip run (seconds) each time."""
    path.mkdir()
    for name in ("install.sh", "balloon-2395", "examples"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, path / name)
    for requirements in ROOT.glob("requirements*.txt"):
        shutil.copy2(requirements, path / requirements.name)
    python = path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    return path


def _install(checkout, root, *args):
    env = dict(os.environ, BALLOON_ROOT=str(root), PYTHON=sys.executable)  # not a pyenv shim: a start costs 0.2 s
    return subprocess.run(["bash", str(checkout / "install.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_systemd_install_keeps_an_edited_config_and_uninstall_removes_what_it_installed(tmp_path):
    checkout = _checkout(tmp_path / "checkout")
    root = tmp_path / "root"
    unit = root / "etc/systemd/system/balloon-2395.service"
    config = root / "etc/balloon-2395/config.yaml"

    def install(*args):
        return _install(checkout, root, *args)

    first = install("--systemd")
    assert first.returncode == 0, first.stderr
    text = unit.read_text()
    assert f"ExecStart={checkout}/balloon-2395 --lock-dir /run/balloon-2395\n" in text
    for line in ("Environment=LC_ALL=C", "RuntimeDirectory=balloon-2395", "Restart=on-failure",
                 "After=libvirtd.service virtqemud.service", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text
    assert config.read_text() == (ROOT / "examples/config.yaml").read_text()
    assert "systemd is not managing this root" in first.stdout  # BALLOON_ROOT: systemctl is never called
    config.write_text("minimal: 20\n")
    again = install("--systemd")
    assert again.returncode == 0 and f"kept {config} as it is" in again.stdout
    assert config.read_text() == "minimal: 20\n"  # never overwritten
    gone = install("--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists() and config.read_text() == "minimal: 20\n"  # edited: the operator's now
    assert f"kept {config}: changed since it was installed" in gone.stdout
    config.unlink()
    assert install("--systemd").returncode == 0
    assert install("--uninstall").returncode == 0
    assert not config.exists() and not config.parent.exists()
    assert install("--uninstall").returncode == 1  # nothing left to remove


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "balloon-2395.service"
    unit.write_text((ROOT / "examples/balloon-2395.service").read_text()
                    .replace("/opt/balloon-2395/", f"{ROOT}/"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_cron_line_still_starts_the_daemon_as_the_original(fake_host, tmp_path):
    line = next(line for line in (ROOT / "examples/crontab").read_text().splitlines() if line.startswith("@reboot"))
    command = line.split("; ", 1)[1].rstrip(" &")
    assert command == "bash /opt/balloon-2395/balloon-2395 --logdir /var/log/balloon-2395"
    host = fake_host(domain("web1", usable_mib=370))
    argv = command.replace("/opt/balloon-2395", str(ROOT)).replace("/var/log", str(tmp_path / "log")).split()
    result = subprocess.run(argv + ["--once", "--config", str(host.config), "--lock-dir", str(host.lock_dir)],
                            env=host.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "grow web1" in (tmp_path / "log/balloon-2395/balloon-2395.log").read_text()
