"""The peers' rules as ported: every vector of pve-manager's test/balloontest.pl (revision
73ed0af158645b3e8db3f1b8f80bc16ffebc2d36) against compute_alg1, vectors worked out by hand from vdsm's
02-balloon.policy (revision 4310de52d06b961c5b4b8f1fb33efea62fb33a32) against mom, their mapping onto
what the daemon observes, and a simulate-until-stable loop (their safety, with every other policy's, is
checked in test_policy.py)."""

from __future__ import annotations

import pytest

from balloon2395 import config
from balloon2395.decide.cycle import POLICIES, decide_all
from balloon2395.decide.figures import Figures
from balloon2395.decide.history import History, Signals
from balloon2395.decide.peers import MOM_SAMPLE_HISTORY, MomHost, PveVm, compute_alg1, mom_rules
from balloon2395.decide.records import GROW, HOLD, SHRINK, Candidate, HostView, Limits
from balloon2395.decide.tuning import TUNING
from balloon2395.observation import HostMemory, Observation
from balloon2395.settings import DomainSettings
from balloon2395.virsh.domain_xml import DomainFacts
from balloon2395.virsh.output import BalloonStats

MIB = 1024
GIB = 1024 * MIB
NOW = 1_800_000_000.0
LINUX = DomainFacts(uuid="u", domain_id="1", windows=None, balloon_model="virtio", stats_period_s=1)
FLOOR = DomainSettings(floor_kib=1 * GIB)


def guest(name, actual_mib, unused_mib, maximum_mib=4096):
    stats = BalloonStats(name=name, actual_kib=actual_mib * MIB, usable_kib=unused_mib * MIB,
                         unused_kib=unused_mib * MIB, maximum_kib=maximum_mib * MIB, last_update=int(NOW))
    return Observation(stats, LINUX, uuid=f"uuid-{name}")


def host(total_kib, available_kib):
    return HostMemory(total_kib=total_kib, available_kib=available_kib, reserve_kib=0)


def decide(name, guests, the_host, settings=None, host_recent=()):
    settings = settings or {}
    decisions = decide_all(guests, {g.name: settings.get(g.name, FLOOR) for g in guests}, {}, the_host, NOW,
                           Limits(), name, host_recent)
    return {d.name: (d.action, None if d.target_kib is None else d.target_kib // MIB) for d in decisions}


def test_the_config_accepts_every_policy_and_no_other():
    assert [config.build({"policy": name}).policy for name in POLICIES] == list(POLICIES)
    with pytest.raises(config.ConfigError):
        config.build({"policy": "peer"})


# ------------------------------------------------------------------ Proxmox VE: balloontest.pl
# Its units: decimal MB and GB of bytes, maxchange MB(100), compute_alg1's own 10 MiB threshold.

def MB(n):
    return n * 1000 * 1000


def GB(n):
    return n * 1000 * 1000 * 1000


PVE_TEST_MAX_CHANGE = MB(100)
PVE_TEST_MIN_GOAL = 10 * 1024 * 1024

# vmid: (maxmem, shares, balloon, balloon_min, freemem), in the order balloontest.pl lists them
STATUS1 = {"100": (GB(2), 2000, GB(1), GB(1), MB(0)),
           "101": (GB(2), 1000, GB(1), GB(1), MB(0))}
STATUS2 = {"100": (GB(2), 2000, GB(2), GB(2), MB(0)),
           "101": (GB(2), 1000, GB(1), GB(1), MB(0))}
STATUS3 = {"100": (GB(2), 2000, GB(2), GB(2), MB(0)),
           "101": (GB(2), 1000, GB(1) + MB(7), GB(1), MB(0)),
           "102": (GB(2), 1000, GB(1), GB(1), MB(512))}


def pve_vms(status):
    return [PveVm(vmid, balloon, balloon_min, maxmem, freemem, shares)
            for vmid, (maxmem, shares, balloon, balloon_min, freemem) in status.items()]


def abtest(status, goal):
    return compute_alg1(pve_vms(status), goal, PVE_TEST_MAX_CHANGE, PVE_TEST_MIN_GOAL)


def absim(status, goal):
    """balloontest.pl's absim: compute_alg1 again on the sizes it set (each VM's freemem moved with its
    balloon, never below 0), the goal less what moved, until a round moves nothing; (the last size of
    each VM that moved, the status at the end)."""
    status = dict(status)
    moved = {}
    for _ in range(1000):
        changes = abschanges = 0
        for vmid, new in abtest(status, goal).items():
            maxmem, shares, balloon, balloon_min, freemem = status[vmid]
            diff = new - balloon
            if diff:
                status[vmid] = (maxmem, shares, new, balloon_min, max(freemem + diff, 0))
                moved[vmid] = new
                changes += diff
                abschanges += abs(diff)
        goal -= changes
        if not abschanges:
            return moved, status
    raise AssertionError("absim did not settle")


# (status, goal, the result abtest expects: only the VMs that change)
ABTEST = [
    (STATUS1, 0, {}),
    (STATUS1, MB(90), {"100": MB(1060), "101": MB(1030)}),
    (STATUS1, MB(150), {"100": MB(1100), "101": MB(1050)}),
    (STATUS1, MB(270), {"100": MB(1100), "101": MB(1090)}),
    (STATUS2, 0, {}),
    (STATUS2, MB(18), {"101": MB(1018)}),
    (STATUS2, MB(500), {"101": MB(1100)}),
    (STATUS3, 0, {}),
    (STATUS3, MB(11), {"101": MB(1018)}),
    (STATUS3, MB(80), {"101": MB(1087)}),
    (STATUS3, MB(200), {"101": MB(1107)}),
]

# (status, goal, the last size absim expects of each VM that moved)
ABSIM = [
    (STATUS1, MB(180), {"100": MB(1120), "101": MB(1060)}),
    (STATUS1, MB(270), {"100": MB(1180), "101": MB(1090)}),
    (STATUS1, MB(600), {"100": MB(1300), "101": MB(1300)}),
    (STATUS1, MB(900), {"100": MB(1600), "101": MB(1300)}),
    (STATUS3, MB(593), {"101": MB(1300), "102": MB(1300)}),
]

# balloontest.pl's last three: each from the status the MB(593) simulation on STATUS3 ended in
ABSIM_AFTER_GROWTH = [
    (-MB(200), {"101": MB(1200), "102": MB(1200)}),
    (-MB(400), {"101": MB(1200), "102": GB(1)}),
    (-MB(593), {"101": MB(1007), "102": GB(1)}),
]


@pytest.mark.parametrize("status, goal, expected", ABTEST)
def test_compute_alg1_gives_balloontests_abtest_results(status, goal, expected):
    assert abtest(status, goal) == expected


@pytest.mark.parametrize("status, goal, expected", ABSIM)
def test_compute_alg1_repeated_gives_balloontests_absim_results(status, goal, expected):
    assert absim(status, goal)[0] == expected


@pytest.mark.parametrize("goal, expected", ABSIM_AFTER_GROWTH)
def test_compute_alg1_gives_back_what_it_gave_as_balloontest_expects(goal, expected):
    _, grown = absim(STATUS3, MB(593))
    assert absim(grown, goal)[0] == expected


# ------------------------------------------------------------------ Proxmox VE: as the daemon runs it

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
                 {"a": FLOOR, "b": DomainSettings(floor_kib=1 * GIB, shares=3000)})
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


# ------------------------------------------------------------------ oVirt MoM: 02-balloon.policy
# Every vector on a host of MOM_TOTAL; sizes in MiB, targets in KiB as the policy's arithmetic gives them
# (int, as MoM's Balloon controller sends them). host_free = StatAvg "mem_free" / MemTotal;
# guest_free = 0.2 * host_free / 0.2, or host_free - 0.05 at 5 % or less;
# floor = max(guaranteed, used + guest_free * cur), used = StatAvg balloon_cur - StatAvg mem_unused;
# shrink (host_free < 20 %): max(0.95 cur, floor) if <= cur; grow: min(max(1.05 cur, floor), max);
# either only if it moves more than 0.25 % of cur; below the guaranteed minimum: the minimum, whatever else.

MOM_TOTAL_MIB = 10240


def mom_guest(cur, unused, guaranteed=1024, maximum=4096, recent=(), name="a"):
    """A candidate of `cur` MiB with `unused` MiB MemFree (None: none reported); `recent`: (size, MemFree)
    of earlier reports in MiB, for StatAvg."""
    figures = Figures(cur * MIB, (unused or 0) * MIB, maximum * MIB, int(NOW),
                      unused_kib=None if unused is None else unused * MIB)
    history = History(recent=tuple((a * MIB, u * MIB) for a, u in recent))
    return Candidate(name, figures, DomainSettings(floor_kib=guaranteed * MIB), maximum * MIB, Signals(), LINUX,
                     history)


def mom_host(*free_mib, total_mib=MOM_TOTAL_MIB):
    """MoM's host record after samples of `free_mib` MiB mem_free each, the last one now."""
    state = MomHost()
    for free in free_mib:
        state = state.saw(host(total_mib * MIB, free * MIB))
    return state


def mom_on(candidate, *free_mib, total_mib=MOM_TOTAL_MIB):
    now_host = host(total_mib * MIB, free_mib[-1] * MIB) if free_mib else None
    proposal = mom_rules(HostView((candidate,), now_host, NOW), mom_host(*free_mib, total_mib=total_mib))["a"]
    return proposal.action, proposal.target_kib


# (guest, host mem_free samples in MiB, expected (action, target KiB))
MOM_GROWS_WITH_THE_HOSTS_FREE = [
    # host_free 5120/10240 = 0.5, guest_free 0.5; used 500: floor max(1024, 500 + 1000) = 1500;
    # max(2100, 1500) = 2100 MiB
    (mom_guest(2000, 1500), (5120,), (GROW, 2100 * MIB)),
    # used 2000: floor max(1024, 2000 + 0.5 * 2000) = 3000; max(2100, 3000) = 3000 MiB
    (mom_guest(2000, 0), (5120,), (GROW, 3000 * MIB)),
    # host_free 2560/10240 = 0.25: floor 2000 + 0.25 * 2000 = 2500 MiB, less room less growth
    (mom_guest(2000, 0), (2560,), (GROW, 2500 * MIB)),
    # host_free 2048/10240 = 0.2 exactly: not below the threshold, so grow; floor 2000 + 400 = 2400 MiB
    (mom_guest(2000, 0), (2048,), (GROW, 2400 * MIB)),
]

MOM_MAXIMUM_LAST = [
    # floor 3900 + 0.5 * 3900 = 5850, max(4095, 5850) = 5850, then the maximum: 4096 MiB
    (mom_guest(3900, 0), (5120,), (GROW, 4096 * MIB)),
    # a lower maximum: floor max(1024, 3000 + 1500) = 4500, max(3150, 4500) = 4500, then the maximum: 3100 MiB
    (mom_guest(3000, 0, maximum=3100), (5120,), (GROW, 3100 * MIB)),
    # at its maximum: nothing to grow
    (mom_guest(4096, 0), (5120,), (HOLD, None)),
]

MOM_SHRINKS_UNDER_PRESSURE = [
    # host_free 1024/10240 = 0.1, guest_free 0.2 * 0.1 / 0.2 = 0.1; used 100: floor max(2900, 100 + 300)
    # = 2900, the guaranteed minimum: max(2850, 2900) = 2900 MiB (balloon.rules' min() gave 2850)
    (mom_guest(3000, 2900, guaranteed=2900), (1024,), (SHRINK, 2900 * MIB)),
    # used 100, floor max(1024, 400) = 1024: no more than 5 %, max(2850, 1024) = 2850 MiB
    (mom_guest(3000, 2900), (1024,), (SHRINK, 2850 * MIB)),
    # used 2000: floor max(1024, 2000 + 300) = 2300; max(2850, 2300) = 2850 MiB
    (mom_guest(3000, 1000), (1024,), (SHRINK, 2850 * MIB)),
    # used 2000, cur 2200: floor max(1024, 2000 + 220) = 2220 > 2090 = 0.95 cur, and above cur: hold
    (mom_guest(2200, 200), (1024,), (HOLD, None)),
    # host_free 1536/10240 = 0.15, guest_free 0.15; used 1600: floor 1600 + 300 = 1900 MiB
    (mom_guest(2000, 400), (1536,), (SHRINK, 1900 * MIB)),
]

MOM_CRITICAL_PRESSURE = [
    # host_free 400/10240 = 0.0390625 <= 0.05: guest_free 0.0390625 - 0.05 = -0.0109375; used 1950: floor
    # 1950 - 0.0109375 * 2000 = 1928.125 > max(1900, ...): 1928.125 MiB = 1974400 KiB, below what it uses
    (mom_guest(2000, 50), (400,), (SHRINK, 1974400)),
    # the same guest at host_free 0.1 (guest_free 0.1): floor 1950 + 200 = 2150 > cur: hold
    (mom_guest(2000, 50), (1024,), (HOLD, None)),
]

MOM_SMALL_CHANGES = [
    # min(max(4294.5, 4090 + 2045), 4096) = 4096: 6 MiB < 0.0025 * 4090 = 10.2 MiB
    (mom_guest(4090, 0), (5120,), (HOLD, None)),
    # host_free 0.1, used 0: floor max(1024, 0 + 103) = 1024; max(978.5, 1024) = 1024: 6 MiB > 0.0025 * 1030
    # = 2.575 MiB, worth it
    (mom_guest(1030, 1030), (1024,), (SHRINK, 1024 * MIB)),
    # max(0.95 * 1026, 1024) = 1024: 2 MiB < 0.0025 * 1026 = 2.565 MiB
    (mom_guest(1026, 1026), (1024,), (HOLD, None)),
]

MOM_GUARANTEED_MINIMUM = [
    # below its guaranteed 1024: the grow rule's max(1050, 1000 + 500) = 1500 is overridden by 1024 MiB
    (mom_guest(1000, 0), (5120,), (GROW, 1024 * MIB)),
    # under host pressure too (host_free 0.1): the shrink rule proposes nothing, the minimum rule 1024 MiB
    (mom_guest(1000, 0), (1024,), (GROW, 1024 * MIB)),
    # no MemFree reported: the ballooning rule skips it, the minimum rule still applies
    (mom_guest(1000, None), (5120,), (GROW, 1024 * MIB)),
    (mom_guest(2000, None), (5120,), (HOLD, None)),
]

MOM_STATAVG = [
    # mem_free 1024, 1024, 5120: StatAvg 7168 / 3 MiB, host_free 0.2333, guest_free 0.2333; used 2000:
    # floor 2048000 + 0.2333 * 2048000 = 2525866.67 KiB (5120 alone gave 3000 MiB)
    (mom_guest(2000, 0), (1024, 1024, 5120), (GROW, 2525866)),
    # mem_free 5120, 5120, 1024: StatAvg 11264 / 3 MiB, host_free 0.3667 >= 0.2: grow, not shrink; used 2000:
    # floor 2000 + 0.3667 * 3000 = 3100; max(3150, 3100) = 3150 MiB (1024 alone shrank it to 2850)
    (mom_guest(3000, 1000), (5120, 5120, 1024), (GROW, 3150 * MIB)),
    # the guest's own StatAvg: sizes 2048, 2048, 1024 and MemFree 1024, 512, 0: used 5242880 / 3 -
    # 1572864 / 3 = 1223338.67 KiB; host_free 0.5: floor 1223338.67 + 0.5 * 1048576 = 1747626.67 KiB
    (mom_guest(1024, 0, recent=((2048, 1024), (2048, 512), (1024, 0))), (5120,), (GROW, 1747626)),
]


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_GROWS_WITH_THE_HOSTS_FREE)
def test_mom_grows_toward_what_the_guest_uses_plus_the_hosts_free_share(candidate, free_mib, expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_MAXIMUM_LAST)
def test_mom_checks_the_maximum_last(candidate, free_mib, expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_SHRINKS_UNDER_PRESSURE)
def test_mom_shrinks_under_host_pressure_by_5_percent_no_lower_than_max_of_minimum_and_use(candidate, free_mib,
                                                                                        expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_CRITICAL_PRESSURE)
def test_mom_under_critical_host_pressure_leaves_guests_less_than_they_use(candidate, free_mib, expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_SMALL_CHANGES)
def test_mom_leaves_changes_of_a_quarter_percent_or_less(candidate, free_mib, expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_GUARANTEED_MINIMUM)
def test_mom_gives_a_guest_below_its_guaranteed_minimum_exactly_that(candidate, free_mib, expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("candidate, free_mib, expected", MOM_STATAVG)
def test_mom_averages_host_and_guest_over_their_recent_samples(candidate, free_mib, expected):
    assert mom_on(candidate, *free_mib) == expected


@pytest.mark.parametrize("free_mib, total_mib", [((5120,), 0), ((), MOM_TOTAL_MIB), ((0,), 0)])
def test_mom_without_a_host_total_decides_nothing(free_mib, total_mib):
    assert mom_on(mom_guest(1000, 0), *free_mib, total_mib=total_mib) == (HOLD, None)


@pytest.mark.parametrize("the_host", [None, host(0, 0), host(0, 2 * GIB)])
def test_mom_as_the_daemon_runs_it_holds_without_a_host_total(the_host):
    assert decide("mom", [guest("a", 2000, 1500)], the_host) == {"a": (HOLD, None)}


def test_mom_host_record_keeps_the_last_samples_and_the_newest_total():
    state = MomHost()
    for i in range(MOM_SAMPLE_HISTORY + 2):
        state = state.saw(host(10 * GIB + i, i))
    assert state.free_kib == tuple(range(2, MOM_SAMPLE_HISTORY + 2)) and state.total_kib == 10 * GIB + 11


def test_mom_as_the_daemon_runs_it_reads_the_current_host():
    # host_free 0.5: floor max(1024, 500 + 1000) = 1500, max(2100, 1500) = 2100; host_free 0.1: 0.95 * 3000
    out = decide("mom", [guest("a", 2000, 1500), guest("b", 3000, 2900)], host(10 * GIB, 5 * GIB))
    assert out == {"a": (GROW, 2100), "b": (GROW, 3150)}
    out = decide("mom", [guest("a", 2000, 1500), guest("b", 3000, 2900)], host(10 * GIB, 1 * GIB))
    assert out == {"a": (SHRINK, 1900), "b": (SHRINK, 2850)}


def test_mom_as_the_daemon_runs_it_averages_the_hosts_recent_reads():
    # host free now 1 GiB of 10 (pressure alone), but the average of (9, 9, 1) GiB is 6.33 GiB: no pressure
    guests = [guest("a", 2000, 1500)]
    now_alone = decide("mom", guests, host(10 * GIB, 1 * GIB))
    averaged = decide("mom", guests, host(10 * GIB, 1 * GIB), host_recent=(9 * GIB, 9 * GIB, 1 * GIB))
    assert now_alone["a"][0] == SHRINK and averaged["a"][0] == GROW


def test_history_keeps_the_last_reports_for_averaging():
    h = History()
    for i in range(TUNING.recent_reports + 2):
        h = h.saw(Figures(2048 * MIB + i, 100, 4 * GIB, int(NOW) + i, unused_kib=i))
    assert [u for _, u in h.recent] == list(range(2, TUNING.recent_reports + 2))


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
