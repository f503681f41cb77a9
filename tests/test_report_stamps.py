"""One change per report, whatever the clock says: a report stamped in the future, backwards, repeated or
jumping is no new report, so it never lets a second grow or shrink land on what one report said."""

from __future__ import annotations

from hypothesis import given, strategies as st

from balloon2395.decide.cycle import decide
from balloon2395.decide.history import History
from balloon2395.decide.records import CHANGES, Limits
from balloon2395.decide.tuning import TUNING
from balloon2395.observation import Observation
from balloon2395.settings import DomainSettings
from balloon2395.virsh.domain_xml import DomainFacts
from balloon2395.virsh.output import BalloonStats

MIB = 1024
NOW = 1_800_000_000
LINUX = DomainFacts(uuid="u", balloon_model="virtio", stats_period_s=1)
USED_KIB = 1900 * MIB  # a guest short of memory at any size it is given here: every fresh report asks for a grow


def cycles(offsets, policy="target"):
    """A cycle a second, the report stamped NOW + offset; the balloon lands each change at once. The
    stamps of the reports each change was decided on."""
    actual, history, decided_on = 2048 * MIB, History(), []
    for i, offset in enumerate(offsets):
        now = NOW + i
        stats = BalloonStats(name="vm", actual_kib=actual, maximum_kib=64 * 1024 * MIB,
                             usable_kib=max(actual - USED_KIB, 0) // 8, last_update=NOW + offset)
        d = decide(Observation(stats, LINUX, uuid="u"), DomainSettings(), history, now, Limits(stale_after_s=1e9),
                   policy)
        history = d.history
        if d.action in CHANGES:
            decided_on.append(NOW + offset)
            history = history.after_change(now, actual, d.target_kib)
            actual = d.target_kib
    return decided_on


def test_a_report_from_the_future_that_never_moves_lets_one_change_land():
    # stamped 5 s ahead: skipped until the clock is within the tolerance, then one grow, then waiting
    ahead = int(TUNING.future_tolerance_s) + 3
    assert len(cycles([ahead + 20] * 30)) == 1


def test_a_report_that_repeats_lets_one_change_land():
    assert len(cycles([0] * 30)) == 1


def test_a_report_stamped_backwards_is_no_new_report():
    assert len(cycles([0] + [-k for k in range(1, 30)])) == 1


def test_reports_that_move_on_each_let_a_change_land():
    assert len(cycles(list(range(0, 60, 2)))) > 1  # the normal case: the guard costs nothing


@given(st.lists(st.integers(-50, 50), min_size=1, max_size=40), st.sampled_from(["target", "step"]))
def test_every_change_is_decided_on_a_report_newer_than_the_last_changes(offsets, policy):
    decided_on = cycles(offsets, policy)
    assert all(later > earlier for earlier, later in zip(decided_on, decided_on[1:]))
