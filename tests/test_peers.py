"""The peers' rules as ported: fixture tables worked out by hand from Proxmox VE's compute_alg1 and
MoM's balloon.rules, and a simulate-until-stable loop (their safety, with every other policy's, is
checked in test_policy.py)."""

from __future__ import annotations

import pytest

from balloon2395 import config, policy
from balloon2395.config import DomainSettings
from balloon2395.decide import POLICIES, decide_all
from balloon2395.domain_xml import DomainFacts
from balloon2395.host import HostMemory
from balloon2395.observe import Observation
from balloon2395.peers import _mom_used_kib
from balloon2395.policy import GROW, HOLD, SHRINK, Candidate, History, Limits, Signals
from balloon2395.virsh_output import BalloonStats

MIB = 1024
GIB = 1024 * MIB
NOW = 1_800_000_000.0
LINUX = DomainFacts(uuid="u", domain_id="1", windows=None, balloon_model="virtio", stats_period_s=1)
FLOOR = DomainSettings(critical_kib=1 * GIB)


def guest(name, actual_mib, unused_mib, maximum_mib=4096):
    stats = BalloonStats(name=name, actual_kib=actual_mib * MIB, usable_kib=unused_mib * MIB,
                         unused_kib=unused_mib * MIB, maximum_kib=maximum_mib * MIB, last_update=int(NOW))
    return Observation(stats, LINUX, uuid=f"uuid-{name}")


def host(total_kib, available_kib):
    return HostMemory(total_kib=total_kib, available_kib=available_kib, reserve_kib=0)


def decide(name, guests, the_host, settings=None):
    settings = settings or {}
    decisions = decide_all(guests, {g.name: settings.get(g.name, FLOOR) for g in guests}, {}, the_host, NOW,
                           Limits(), name)
    return {d.name: (d.action, None if d.target_kib is None else d.target_kib // MIB) for d in decisions}


def test_the_config_offers_every_policy():
    assert set(config.POLICIES) == set(POLICIES)


# ------------------------------------------------------------------ Proxmox VE

def pve_host(goal_kib, total_kib=10 * GIB):
    """A host whose compute_alg1 goal (80 % of MemTotal minus what is used) is `goal_kib`."""
    return host(total_kib, goal_kib + total_kib // 5)


def test_proxmox_grows_the_vms_under_pressure_by_at_most_100_mib():
    out = decide("proxmox", [guest("a", 2048, 50), guest("b", 2048, 50)], pve_host(4 * GIB))
    assert out == {"a": (GROW, 2148), "b": (GROW, 2148)}


def test_proxmox_does_nothing_for_a_goal_within_10_mib():
    out = decide("proxmox", [guest("a", 2048, 50)], pve_host(10 * MIB))
    assert out == {"a": (HOLD, None)}


def test_proxmox_shares_a_small_growth_by_shares():
    # alloc_new = 60 MiB over shares 1000 + 3000: a gets 15 MiB, b 45 MiB above the minimum
    the_host = pve_host(60 * MIB)
    out = decide("proxmox", [guest("a", 1024, 50), guest("b", 1024, 50)], the_host,
                 {"a": FLOOR, "b": DomainSettings(critical_kib=1 * GIB, shares=3000)})
    assert out == {"a": (GROW, 1039), "b": (GROW, 1069)}


def test_proxmox_shrinks_the_vms_with_free_memory_first():
    # a has free memory above a quarter of its minimum, b has not: a alone gives back, 100 MiB
    out = decide("proxmox", [guest("a", 3072, 1024), guest("b", 3072, 100)], pve_host(-3 * GIB))
    assert out == {"a": (SHRINK, 2972), "b": (HOLD, None)}


def test_proxmox_never_shrinks_below_the_minimum():
    out = decide("proxmox", [guest("a", 1074, 1000)], pve_host(-3 * GIB))
    assert out == {"a": (SHRINK, 1024)}


def test_proxmox_never_grows_past_the_maximum():
    out = decide("proxmox", [guest("a", 4050, 10, maximum_mib=4096)], pve_host(4 * GIB))
    assert out == {"a": (GROW, 4096)}


def test_proxmox_needs_the_hosts_figures():
    assert decide("proxmox", [guest("a", 2048, 50)], None) == {"a": (HOLD, None)}


# ------------------------------------------------------------------ oVirt MoM

def test_mom_grows_every_guest_5_percent_while_the_host_has_20_percent_free():
    out = decide("mom", [guest("a", 2000, 1500), guest("b", 4000, 10, maximum_mib=4096)], host(10 * GIB, 2 * GIB))
    assert out == {"a": (GROW, 2100), "b": (GROW, 4096)}


def test_mom_shrinks_every_guest_5_percent_under_host_pressure():
    out = decide("mom", [guest("a", 2000, 1500), guest("b", 3000, 10)], host(10 * GIB, 1 * GIB))
    assert out == {"a": (SHRINK, 1900), "b": (SHRINK, 2850)}


def test_mom_leaves_changes_under_a_quarter_percent():
    out = decide("mom", [guest("a", 4090, 1500, maximum_mib=4096)], host(10 * GIB, 5 * GIB))
    assert out == {"a": (HOLD, None)}


def test_mom_averages_the_used_memory_of_recent_reports():
    recent = ((2048 * MIB, 1024 * MIB), (2048 * MIB, 512 * MIB), (1024 * MIB, 0))
    c = Candidate("a", policy.Figures(1024 * MIB, 0, 4 * GIB, int(NOW), unused_kib=0), FLOOR, 4 * GIB, Signals(),
                  LINUX, History(recent=recent))
    assert _mom_used_kib(c) == (5120 * MIB / 3) - (1536 * MIB / 3)


def test_history_keeps_the_last_reports_for_averaging():
    h = History()
    for i in range(policy.RECENT_REPORTS + 2):
        h = h.saw(policy.Figures(2048 * MIB + i, 100, 4 * GIB, int(NOW) + i, unused_kib=i))
    assert [u for _, u in h.recent] == list(range(2, policy.RECENT_REPORTS + 2))


# ------------------------------------------------------------------ until stable

@pytest.mark.parametrize("name", ["proxmox", "mom"])
def test_on_a_roomy_host_the_peers_grow_every_guest_to_its_maximum(name):
    """Both keep a host below their threshold by handing guests memory: a simulate-until-stable loop
    with the host's use following the guests' sizes."""
    sizes = {"a": 1024 * MIB, "b": 2048 * MIB}
    total, own = 32 * GIB, 2 * GIB
    for _ in range(200):
        guests = [guest(n, size // MIB, 200) for n, size in sizes.items()]
        out = decide(name, guests, host(total, total - own - sum(sizes.values())))
        if all(action == HOLD for action, _ in out.values()):
            break
        sizes = {n: target * MIB if target else sizes[n] for n, (_, target) in out.items()}
    assert sizes == {"a": 4 * GIB, "b": 4 * GIB}
