"""balloon-2395 as an operator runs it, against a fake virsh on PATH: in process (host.cli, run_cli)
where the process itself is not the point, as a real process for the launcher and Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from balloon2395.lifetime import READ_LINE
from balloon2395.service import EXIT_INTERRUPTED
from conftest import MIB, ROOT, domain, run_cli, uuid_of


def test_once_makes_exactly_the_expected_setmem_calls(fake_host):
    host = fake_host(
        domain("web 1", usable_mib=370),                 # 18% -> grow by 100 MiB
        domain("-idle", usable_mib=1500),                # 73% -> shrink by 50 MiB
        domain("café", usable_mib=600),                  # 29% -> in band
        domain("win10", usable_mib=100, os="http://microsoft.com/win/10"),
        domain("tiny", actual_mib=340, usable_mib=300),  # shrink would cross the 300 MiB floor
        domain("full", actual_mib=4096, usable_mib=100),  # at its maximum
        domain("off", usable_mib=100, state="shut off"),
        domain("stale", usable_mib=100, age=60),
    )
    result = host.cli("--once")
    assert result.returncode == 0, result.stderr
    assert host.setmems() == [
        ["setmem", "--domain", uuid_of("web 1"), "--size", str(2148 * MIB), "--live"],
        ["setmem", "--domain", uuid_of("-idle"), "--size", str(1998 * MIB), "--live"],
    ]
    log = result.stderr
    assert "INFO grow web 1 2048 -> 2148 MiB: usable 18% < 25%" in log
    assert "INFO shrink -idle 2048 -> 1998 MiB: usable 73% > 35%" in log
    assert "skip win10: Windows guest" in log
    assert "hold tiny: usable 88% > 35% but floor is 300 MiB" in log
    assert "hold full: usable 2% < 25% but at maximum 4096 MiB" in log
    assert "skip stale: stats stale" in log
    assert "off" not in log
    # one read (domstats and the ids, one process), one dumpxml per domain, then the changes: nothing else
    assert [c[0] for c in host.calls()] == [READ_LINE] + ["dumpxml"] * 7 + ["setmem"] * 2


def test_dry_run_changes_nothing(fake_host):
    host = fake_host(domain("web1", usable_mib=370))
    before = host.read()
    result = host.cli("--once", "--dry-run")
    assert result.returncode == 0
    assert host.setmems() == [] and host.read() == before
    assert "dry-run: grow web1 2048 -> 2148 MiB: usable 18% < 25%" in result.stderr


def test_flags_and_config_file_set_the_knobs(fake_host):
    host = fake_host(domain("web1", usable_mib=700), domain("db-1", usable_mib=700))
    host.config.write_text("policy: step\nminimal: 40\nmaximal: 60\naddram: 1GiB\n"
                           "domains:\n  'db-*': {exclude: true}\n")
    result = host.cli("--once", "--addram", "256MiB")
    assert result.returncode == 0, result.stderr
    assert host.setmems() == [["setmem", "--domain", uuid_of("web1"), "--size", str(2304 * MIB), "--live"]]


def test_connect_uri_reaches_every_virsh_call(fake_host):
    host = fake_host(domain("web1", usable_mib=100))
    assert host.cli("--once", "--connect", "qemu+ssh://host2/system").returncode == 0
    calls = host.calls()
    assert calls and all(c[:2] == ["-c", "qemu+ssh://host2/system"] for c in calls)
    run_cli(host.daemon_argv("--once")[1:], dict(host.env, LIBVIRT_DEFAULT_URI="test:///default"))
    assert "-c" not in host.calls()[-1]  # virsh itself reads LIBVIRT_DEFAULT_URI


def test_status_table_and_json(fake_host):
    host = fake_host(domain("web1", usable_mib=370), domain("idle", usable_mib=1500), domain("ok", usable_mib=600))
    table = host.cli("status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["DOMAIN", "ACTUAL_MiB", "USABLE_MiB", "USABLE%"]
    assert lines[1].split()[:9] == ["web1", "2048", "370", "18%", "25-35%", "300", "4096", "virtio", "grow"]
    assert "usable 18% < 25%" in lines[1]
    rows = json.loads(host.cli("status", "--json").stdout)
    assert [(r["domain"], r["next"], r["target_mib"]) for r in rows] == [
        ("web1", "grow", 2148), ("idle", "shrink", 1998), ("ok", "hold", None)]
    assert host.setmems() == []  # status never changes anything
    assert not any("--period" in c for c in host.calls())


def test_launcher_bash_and_exec_and_symlink_behave_the_same(fake_host, tmp_path):
    host = fake_host(domain("web1", usable_mib=1500))
    link = tmp_path / "elsewhere" / "b2395"
    link.parent.mkdir()
    link.symlink_to(ROOT / "balloon-2395")
    ways = (["bash", str(ROOT / "balloon-2395")], [str(ROOT / "balloon-2395")], ["bash", str(link)], [str(link)])
    started = [subprocess.Popen([*argv, "status", "--json", "--config", str(host.config)], env=host.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
               for argv in ways]  # all at once: each start is the launcher's, none waits for another
    helping = subprocess.Popen(["bash", str(ROOT / "balloon-2395"), "--help"], stdout=subprocess.PIPE, text=True)
    outputs = []
    for argv, proc in zip(ways, started):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (argv, err)
        outputs.append(json.loads(out))
    assert all(o[0]["domain"] == "web1" and o[0]["next"] == "shrink" for o in outputs)
    help_text = helping.communicate(timeout=60)[0]
    assert helping.returncode == 0 and "check-config" in help_text and "--minimal" in help_text


def test_launcher_says_what_to_run_without_a_venv(tmp_path):
    copy = tmp_path / "balloon-2395"
    shutil.copy(ROOT / "balloon-2395", copy)
    result = subprocess.run(["bash", str(copy), "--help"], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"run {tmp_path}/install.sh first" in result.stderr


def test_logdir_writes_a_log_file(fake_host, tmp_path):
    host = fake_host(domain("web1", usable_mib=370))
    logdir = tmp_path / "logs"
    result = host.cli("--once", "--logdir", str(logdir))
    assert result.returncode == 0 and result.stderr == ""
    assert "grow web1 2048 -> 2148 MiB" in (logdir / "balloon-2395.log").read_text()


def test_debug_block(fake_host):
    host = fake_host(domain("web1", usable_mib=370))
    result = host.cli("--once", "--debug")
    assert "----- web1 -----" in result.stderr
    assert "decision grow -> 2148 MiB: usable 18% < 25%" in result.stderr


def test_missing_virsh_is_a_clear_error(fake_host):
    host = fake_host(domain("web1"))
    result = host.cli("--once", "--virsh", "/nonexistent/virsh")
    assert result.returncode == 1
    assert "virsh not found: '/nonexistent/virsh'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_hypervisor_once_exits_1_without_traceback(fake_host):
    host = fake_host(domain("web1"))
    state = host.read()
    state["faults"] = {"domstats": {"exit": 1, "stderr": "error: failed to connect to the hypervisor\n"
                                    "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
                                    "No such file or directory\n"}}
    host.write(state)
    result = host.cli("--once")
    assert result.returncode == 1
    assert "cannot read running domains: error: failed to connect to the hypervisor" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(fake_host):
    host = fake_host()
    assert host.cli("--minimal", "lots").returncode == 2
    assert host.cli("--policy", "magic").returncode == 2
    assert host.cli("--bogus").returncode == 2


@pytest.mark.parametrize("argv, flag", [
    (["status", "--watch", "--refresh", value], "--refresh") for value in ("-1", "nan", "inf", "0", "1e400", "x")
] + [
    (["status", "--watch", "--count", value], "--count") for value in ("0", "-3", "1.5", "nan")
] + [
    (["--simulate", "--duration", value], "--duration") for value in ("0", "-1", "nan", "inf")
] + [
    (["--simulate", "--speed", value], "--speed") for value in ("0", "-1", "nan", "inf")
])
def test_a_number_flag_out_of_range_is_a_usage_error(argv, flag):
    result = run_cli(argv)
    assert result.returncode == 2
    usage, said = result.stderr.splitlines()[0], result.stderr.splitlines()[-1]
    assert usage.startswith("usage: balloon-2395") and f": error: argument {flag}: " in said
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config, argv, said", [
    ("policy: step\n", ["--maximal", "10"], "balloon-2395: --maximal 10: must be above minimal (25, the default)\n"),
    ("minimal: 30\n", ["--maximal", "28"], "balloon-2395: --maximal 28: must be above minimal (30, from {config})\n"),
    ("maximal: 40\n", ["--minimal", "50"], "balloon-2395: --minimal 50: must be below maximal (40, from {config})\n"),
])
def test_a_band_flag_error_names_the_flag_and_where_the_other_value_came_from(fake_host, config, argv, said):
    host = fake_host(domain("web1", usable_mib=370))
    host.config.write_text(config)
    result = host.cli("--once", *argv)
    assert result.returncode == 2 and result.stderr == said.format(config=host.config)
    assert host.calls() == []


@pytest.fixture
def sigint_delivered():
    """Children that get SIGINT: a test run started in the background (`cmd &` without job control) has it
    ignored, and a child inherits an ignored signal, as a daemon started that way rightly does."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("view", [("explain", "web1"), ("status",), ("status", "--json")])
def test_ctrl_c_in_a_one_shot_view_ends_with_130_and_no_traceback(fake_host, daemons, view, sigint_delivered):
    host = fake_host(domain("web1", usable_mib=370))
    host.write({**host.read(), "faults": {"domstats": {"sleep": 0.5}}})  # a slow read: Ctrl-C lands in it
    proc = daemons(host, *view)
    host.signal_inside(proc, signal.SIGINT, "domstats")
    assert proc.wait(timeout=20) == 130
    assert proc.stderr.read() == "" and proc.stdout.read() == ""


def test_ctrl_c_in_check_config_ends_with_130_and_no_traceback(tmp_path, sigint_delivered):
    config = tmp_path / "config.yaml"
    config.write_text("policy: step\n")
    script = f"""
import os, signal, sys
from balloon2395 import cli, config
loaded = config.load
def load(*args):  # Ctrl-C while the file is read
    os.kill(os.getpid(), signal.SIGINT)
    return loaded(*args)
config.load = load
sys.exit(cli.main(["check-config", {str(config)!r}]))
"""
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT / "lib")),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_INTERRUPTED and result.stderr == "" and result.stdout == ""


def test_version():
    result = run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.startswith("balloon-2395 ")


def test_default_config_path_is_read_when_present(fake_host, monkeypatch):
    # The default path is a constant; check the CLI would use it (without touching /etc).
    from balloon2395 import config as cfg
    assert cfg.DEFAULT_CONFIG_PATH == "/etc/balloon-2395/config.yaml"
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATH", os.devnull)
    assert cfg.default_path() == os.devnull


def test_target_policy_flags(fake_host):
    # used 1848 MiB: the middle of the band is 2640 MiB; a 1 GiB headroom asks for 1848 + 1024 + 64 pad
    host = fake_host(domain("web1", actual_mib=2048, usable_mib=200))
    result = host.cli("--once", "--policy", "target", "--host-memory", "off", "--headroom", "1GiB")
    assert result.returncode == 0, result.stderr
    assert host.setmems() == [["setmem", "--domain", uuid_of("web1"), "--size", str(2936 * MIB), "--live"]]
    assert "grow web1 2048 -> 2936 MiB: usable 9% < 25%" in result.stderr
    bad = host.cli("--once", "--host-reserve", "95%")
    assert bad.returncode == 2 and "--host-reserve: must be between 0 and 90" in bad.stderr
