"""Right after a shrink the balloon's size is already the new one while the guest's last report is
still of the old size: that is a change landing, not inconsistent stats."""

from __future__ import annotations

from balloon2395.decide.cycle import decide
from balloon2395.decide.history import History
from balloon2395.decide.records import SKIP, WAIT
from balloon2395.observation import Observation
from balloon2395.settings import DomainSettings
from balloon2395.virsh.domain_xml import DomainFacts
from balloon2395.virsh.output import BalloonStats

MIB = 1024
NOW = 1_800_000_000.0
LINUX = DomainFacts(uuid="u", balloon_model="virtio", stats_period_s=1)


def _after_a_shrink_to(actual_mib, reported_at):
    stats = BalloonStats(name="vm", actual_kib=actual_mib * MIB, maximum_kib=4096 * MIB, usable_kib=1500 * MIB,
                         last_update=int(reported_at))
    history = History(changed_at=NOW - 0.5, from_kib=2048 * MIB, target_kib=1024 * MIB)
    return decide(Observation(stats, LINUX, uuid="u"), DomainSettings(), history, NOW)


def test_a_report_older_than_the_shrink_waits_for_a_newer_one():
    decision = _after_a_shrink_to(1024, reported_at=NOW - 1)
    assert (decision.action, decision.code) == (WAIT, "pending")


def test_a_report_newer_than_the_shrink_with_usable_above_the_size_is_inconsistent():
    decision = _after_a_shrink_to(1024, reported_at=NOW)
    assert (decision.action, decision.code) == (SKIP, "inconsistent")
