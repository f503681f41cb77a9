"""The simulator speaks virsh: its output goes through the parsers real virsh output goes through."""

from __future__ import annotations

import json
import subprocess

import pytest

from balloon2395.lifetime import parse_running
from balloon2395.sim.host import TICKS_PER_S, SimHost
from balloon2395.sim.model import BALLOON_KIB_S, MIB, usable_kib
from balloon2395.sim.scenario import load
from balloon2395.sim.virsh import STATE_ENV, SimVirsh, answer
from balloon2395.virsh.commands import VirshError
from balloon2395.virsh.domain_xml import parse_domain_xml
from conftest import ROOT, run_cli

SCENARIO = """
host: {total: 8GiB, own: 1GiB, cache: 512MiB}
guests:
  - {name: web 1, current: 1GiB, maximum: 2GiB, swap: 256MiB}
  - {name: quiet, current: 1GiB, maximum: 2GiB, stats_period: 0}
"""


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture
def host(scenario_file):
    return SimHost(load(str(scenario_file)))


def run_seconds(host: SimHost, seconds: float) -> None:
    for _ in range(round(seconds * TICKS_PER_S)):
        host.step()


def test_domstats_and_dommemstat_parse_to_the_models_figures(host):
    virsh = SimVirsh(host)
    web, quiet = virsh.domstats_balloon()
    g = host.guests[0]
    assert (web.name, web.actual_kib, web.maximum_kib) == ("web 1", 1024 * MIB, 2048 * MIB)
    assert web.usable_kib == usable_kib(g.plan.spec, g.state) < web.actual_kib
    assert web.available_kib == 1024 * MIB - g.plan.spec.reserved_kib
    assert web.unused_kib == g.state.free_kib and web.disk_caches_kib == g.state.cache_kib
    assert web.swap_in_kib == 0 and web.last_update == int(host.now) and web.rss_kib == 1024 * MIB
    assert quiet.usable_kib is not None and quiet.last_update == host.now - 600  # no period: its report from boot
    assert virsh.dommemstat("web 1") == web.__class__(**{**web.__dict__, "maximum_kib": None})
    listed = parse_running("\n" + virsh.run("list", "--uuid", "--name", "--state-running"), with_ids=False)
    assert list(listed.lifetimes) == ["web 1", "quiet"]
    assert virsh.max_memory_kib("quiet") == 2048 * MIB


def test_dumpxml_describes_a_virtio_balloon_with_the_stats_period(host):
    virsh = SimVirsh(host)
    facts = parse_domain_xml(virsh.dumpxml("web 1"))
    assert (facts.balloon_model, facts.stats_period_s, facts.windows) == ("virtio", 1, None)
    assert parse_domain_xml(virsh.dumpxml("quiet")).stats_period_s is None


def test_errors_are_real_virshs(host):
    virsh = SimVirsh(host)
    with pytest.raises(VirshError) as caught:
        virsh.setmem("web 1", 3 * 1024 * MIB)
    assert caught.value.message == "error: invalid argument: cannot set memory higher than max memory"
    with pytest.raises(VirshError) as caught:
        virsh.dumpxml("nosuch")
    assert caught.value.domain_gone
    stdout, stderr, code = answer(host, "metadata", ["--domain", "quiet", "--uri",
                                                     "http://libosinfo.org/xmlns/libvirt/domain/1.0"])
    assert code == 1 and stderr.startswith("error: metadata not found")
    stdout, _, code = answer(host, "nodememstats", [])
    mem = host.memory()
    figures = {key.strip(): value.split() for key, value in (line.split(":") for line in stdout.splitlines() if line)}
    assert code == 0 and figures == {"total": [str(mem.total_kib), "KiB"], "free": [str(mem.free_kib), "KiB"],
                                     "buffers": ["0", "KiB"], "cached": [str(mem.cache_kib), "KiB"]}


def test_setmem_moves_the_balloon_at_its_speed_and_stats_lag_a_period(host):
    virsh = SimVirsh(host)
    before = virsh.domstats_balloon()[0]
    virsh.setmem("web 1", 512 * MIB)
    assert virsh.domstats_balloon()[0].actual_kib == 1024 * MIB  # a target, not yet a size
    host.step()
    moved = virsh.domstats_balloon()[0]
    assert moved.actual_kib == 1024 * MIB - BALLOON_KIB_S // TICKS_PER_S
    assert (moved.usable_kib, moved.last_update) == (before.usable_kib, before.last_update)  # stale until reported
    run_seconds(host, 2.0)  # stamps are whole seconds, as virsh's are
    after = virsh.domstats_balloon()[0]
    assert after.actual_kib == 512 * MIB and after.usable_kib < before.usable_kib
    assert after.last_update > before.last_update
    assert host.guests[0].setmems == 1


def test_a_guest_without_a_period_reports_once_the_daemon_sets_one(host):
    virsh = SimVirsh(host)
    run_seconds(host, 2.0)
    assert virsh.domstats_balloon()[1].last_update == host.epoch - 600  # frozen
    virsh.enable_stats("quiet", 1)
    assert "stats period='1'" in virsh.dumpxml("quiet")
    run_seconds(host, 1.0)
    assert host.now - 1 <= virsh.domstats_balloon()[1].last_update <= host.now


def crowded(tmp_path, host_swap: str) -> SimHost:
    """A host whose RAM holds both guests until `big` allocates 1700 MiB at t=1 s: its RSS grows to
    about 1956 MiB, its host needs about 4004 MiB of its 3584."""
    path = tmp_path / "crowded.yaml"
    path.write_text(f"""
host: {{total: 3584MiB, own: 1GiB, swap: {host_swap}}}
guests:
  - {{name: big, current: 2GiB, maximum: 3GiB, touched: 1GiB, workload: [{{at: 1, anon: +1700MiB}}]}}
  - {{name: small, current: 1GiB, maximum: 2GiB, deflate_on_oom: true, free_page_reporting: true}}
""")
    return SimHost(load(str(path)))


def test_the_host_swaps_while_the_guests_rss_exceeds_its_ram(tmp_path):
    host = crowded(tmp_path, "1GiB")
    run_seconds(host, 0.9)
    assert not host.swapping and host.memory().swapped_kib == 0
    run_seconds(host, 0.6)
    mem = host.memory()
    assert host.swapping and host.swap_ticks == 6  # from t=1 s on
    assert mem.swapped_kib == mem.own_kib + mem.rss_kib - mem.total_kib > 0 and mem.free_kib == mem.cache_kib == 0
    assert all(g.lost_at_s is None for g in host.guests)  # its swap holds the rest


def test_the_host_oom_killer_kills_the_largest_qemu_and_its_domain_is_gone(tmp_path):
    host = crowded(tmp_path, "256MiB")
    virsh = SimVirsh(host)
    run_seconds(host, 3.0)
    big, small = host.guests
    assert (big.lost_at_s, small.lost_at_s, big.state.touched_kib) == (1.0, None, 0)
    assert [s.name for s in virsh.domstats_balloon()] == ["small"]
    assert virsh.run("list", "--id", "--name") == "2 small\n\n"  # the survivor keeps its id
    with pytest.raises(VirshError) as caught:
        virsh.setmem(big.uuid, 1024 * MIB)
    assert caught.value.domain_gone
    assert host.memory().rss_kib == small.state.touched_kib and not host.swapping


def test_the_host_oom_killer_kills_until_the_rest_fits(tmp_path):
    path = tmp_path / "three.yaml"
    path.write_text("""
host: {total: 2GiB, own: 1GiB}
guests:
  - {name: a, current: 600MiB, maximum: 1GiB}
  - {name: b, current: 1GiB, maximum: 2GiB}
  - {name: c, current: 500MiB, maximum: 1GiB}
""")
    host = SimHost(load(str(path)))
    host.step()
    assert [g.name for g in host.running] == ["c"]  # 1024 + 600 + 500 MiB, then 600 + 500, did not fit in 1 GiB


def test_the_state_file_keeps_losses_host_swap_and_the_balloon_features(tmp_path):
    host = crowded(tmp_path, "256MiB")
    run_seconds(host, 1.5)
    saved = SimHost.from_json(json.loads(json.dumps(host.to_json())))
    assert [g.lost_at_s for g in saved.guests] == [1.0, None] and [g.name for g in saved.running] == ["small"]
    assert (saved.swapping, saved.swap_ticks) == (host.swapping, host.swap_ticks) == (False, 1)
    assert [g.state for g in saved.guests] == [g.state for g in host.guests]
    assert saved.guests[1].state.fpr_wait_s > 0  # its boot's free pages are waiting for the reporting pass


def test_dumpxml_shows_the_balloon_features_a_guest_has(tmp_path):
    virsh = SimVirsh(crowded(tmp_path, "0"))
    assert "<memballoon model='virtio'>" in virsh.dumpxml("big")
    assert "<memballoon model='virtio' autodeflate='on' freePageReporting='on'>" in virsh.dumpxml("small")


def test_the_executable_serves_the_real_daemon(tmp_path, scenario_file):
    env = {"PATH": "/usr/bin:/bin", STATE_ENV: str(tmp_path / "state.json")}
    sim_virsh = str(ROOT / "examples" / "sim-virsh")
    init = subprocess.run([sim_virsh, "--sim-init", str(scenario_file)], env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    listed = subprocess.run([sim_virsh, "-c", "qemu:///system", "list", "--name"], env=env, capture_output=True,
                            text=True)
    assert listed.stdout == "web 1\nquiet\n\n"
    daemon = run_cli(["--once", "--virsh", sim_virsh, "--lock-dir", str(tmp_path / "lock"), "--config", "/dev/null",
                      "--policy", "step"], env)
    assert daemon.returncode == 0, daemon.stderr
    assert "shrink web 1 1024 -> 974 MiB" in daemon.stderr
    assert "quiet: no fresh usable figure: stats period set to 1s" in daemon.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert [g["state"]["target_kib"] for g in state["guests"]] == [974 * MIB, 1024 * MIB]
    assert [g["period_s"] for g in state["guests"]] == [1, 1]
    missing = subprocess.run([sim_virsh, "list"], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert missing.returncode == 1 and STATE_ENV in missing.stderr


@pytest.mark.parametrize("accel, gap_s", [("kvm", 1.0), ("tcg", 1.8)])
def test_an_emulated_guest_answers_each_stats_request_late(tmp_path, accel, gap_s):
    """QEMU asks again a period after the last answer: 1 s under KVM, 1 s + TCG_REPORT_DELAY_S emulated."""
    path = tmp_path / "one.yaml"
    path.write_text(f"host: {{total: 8GiB, accel: {accel}}}\nguests: [{{name: g, current: 1GiB, maximum: 2GiB}}]\n")
    host = SimHost(load(str(path)))
    guest, reported = host.guests[0], []
    for _ in range(10 * TICKS_PER_S):
        before = guest.stats
        host.step()
        if guest.stats is not before:
            reported.append(host.tick)
    assert {b - a for a, b in zip(reported, reported[1:])} == {round(gap_s * TICKS_PER_S)}
