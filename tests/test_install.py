"""install.sh --systemd / --uninstall under BALLOON_ROOT (never the real /etc), and the unit itself."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

from balloon2395 import config as cfg
from conftest import ROOT, domain

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NEEDS_SYSTEMD_ANALYZE = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze not installed (Debian: the systemd package)")
MOST_EXPOSURE = 3.0  # issue 24, class 9: `systemd-analyze security` scored the unit 5.6 MEDIUM before


def _checkout(path):
    """A copy of the checkout's files install.sh uses, beside a .venv whose pip finds nothing to do:
    what --systemd and --uninstall do is the same, without a real pip run (seconds) each time."""
    path.mkdir()
    for name in ("install.sh", "balloon-2395", "examples", "docs"):
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
                 "After=libvirtd.service virtqemud.service", "ExecReload=/bin/kill -HUP $MAINPID",
                 "Type=notify\n", "NotifyAccess=main\n", "WatchdogSec=", "UMask=0077\n", "ProtectSystem=strict\n"):
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


EXTRAS = {"usr/local/share/man/man8/balloon-2395.8": "docs/balloon-2395.8",
          "usr/local/share/bash-completion/completions/balloon-2395": "examples/completion/bash/balloon-2395",
          "usr/local/share/zsh/site-functions/_balloon-2395": "examples/completion/zsh/_balloon-2395"}


def test_systemd_install_puts_the_manual_page_and_completions_where_man_and_the_shells_look(tmp_path):
    root = tmp_path / "root"
    result = _install(_checkout(tmp_path / "checkout"), root, "--systemd")
    assert result.returncode == 0, result.stderr
    assert {target: (root / target).read_text() for target in EXTRAS} == {
        target: (ROOT / source).read_text() for target, source in EXTRAS.items()}


def test_uninstall_removes_the_manual_page_and_completions(tmp_path):
    checkout, root = _checkout(tmp_path / "checkout"), tmp_path / "root"
    assert _install(checkout, root, "--systemd").returncode == 0
    result = _install(checkout, root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert [target for target in EXTRAS if (root / target).exists()] == []


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


# --------------------------------------------------------------------- the packaged defaults (issue 24, class 9)
def _deb_files(tmp_path):
    """What the .deb installs from this checkout: the conffile (debian/balloon-2395.install) and the unit
    debian/rules makes, made by debian/rules itself in a copy (the checkout gains no build file)."""
    work = tmp_path / "deb"
    work.mkdir()
    for name in ("debian", "examples"):
        shutil.copytree(ROOT / name, work / name)
    if shutil.which("make") is None:
        pytest.skip("make not installed: debian/rules cannot make the unit")
    made = subprocess.run(["make", "-s", "-f", "debian/rules", "execute_after_dh_auto_build"], cwd=work,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    installs = [line.split() for line in (ROOT / "debian/balloon-2395.install").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    conffiles = [work / source for source, target in installs if target.rstrip("/") == "etc/balloon-2395"]
    assert [c.name for c in conffiles] == ["config.yaml"]
    return conffiles[0], work / "debian/balloon-2395.service"


def _installed(tmp_path):
    """What `install.sh --systemd` writes: the config and the unit."""
    root = tmp_path / "root"
    result = _install(_checkout(tmp_path / "checkout"), root, "--systemd")
    assert result.returncode == 0, result.stderr
    return root / "etc/balloon-2395/config.yaml", root / "etc/systemd/system/balloon-2395.service"


def _is_the_defaults(path):
    loaded, defaults = cfg.load(str(path), {}), cfg.build({})
    assert loaded.rules == ()  # no active per-domain rule: no guest excluded, capped or banded by example
    assert dataclasses.replace(loaded, band_from=defaults.band_from) == defaults


def test_the_config_install_sh_installs_is_the_defaults_with_no_domain_rules(tmp_path):
    config, _ = _installed(tmp_path)
    _is_the_defaults(config)


def test_the_debs_conffile_is_the_defaults_with_no_domain_rules(tmp_path):
    config, _ = _deb_files(tmp_path)
    _is_the_defaults(config)


def test_the_configs_commented_domain_rules_are_valid_once_uncommented(tmp_path):
    text = (ROOT / "examples/config.yaml").read_text()
    block = text[text.index("# domains:\n"):]
    lines = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    assert lines[0] == "domains:" and all(line.startswith("  ") for line in lines[1:])
    uncommented = tmp_path / "config.yaml"
    uncommented.write_text(text.replace(block, "\n".join(lines) + "\n"))
    rules = cfg.load(str(uncommented), {}).rules
    assert [rule.pattern for rule in rules] == ["db-*", "build-*", "appliance-firewall"]
    assert dict(rules[2].overrides) == {"exclude": True}


def _exposure(unit):
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert len(overall) == 1, result.stdout
    return float(overall[0].split(":")[1].split()[0])


@NEEDS_SYSTEMD_ANALYZE
@pytest.mark.parametrize("made_by", ["example", "install.sh", "debian/rules"])
def test_the_unit_scores_at_most_3_in_systemd_analyze_security(tmp_path, made_by):
    unit = {"example": lambda: ROOT / "examples/balloon-2395.service",
            "install.sh": lambda: _installed(tmp_path)[1],
            "debian/rules": lambda: _deb_files(tmp_path)[1]}[made_by]()
    text = unit.read_text()
    assert "Type=notify\n" in text and "WatchdogSec=" in text and "NotifyAccess=main\n" in text
    assert _exposure(unit) <= MOST_EXPOSURE
