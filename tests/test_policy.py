"""The decision function: fixture tables for the rule, hypothesis for the safety invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from balloon2395.config import DomainSettings
from balloon2395.domain_xml import DomainFacts
from balloon2395.policy import (GROW, HOLD, SETTLE_S, SHRINK, SKIP, WAIT, History, Limits, Observation,
                                decide)
from balloon2395.virsh_output import BalloonStats

MIB = 1024
NOW = 1_800_000_000.0
LINUX = DomainFacts(uuid="u", domain_id="1", windows=None, balloon_model="virtio", stats_period_s=1)
DEFAULTS = DomainSettings()


def obs(actual=2048, usable=600, maximum=4096, age=0.5, facts=LINUX, stats_since=None, **stats):
    return Observation(BalloonStats(name="vm", actual_kib=actual * MIB, usable_kib=None if usable is None else usable * MIB,
                                    maximum_kib=None if maximum is None else maximum * MIB,
                                    last_update=None if age is None else int(NOW - age), **stats), facts, stats_since)


# (actual MiB, usable MiB, maximum MiB, settings overrides) -> (action, target MiB)
STEP_TABLE = [
    # usable% below 25 -> +100 MiB
    ((2048, 400, 4096, {}), (GROW, 2148)),
    # the original's integer percent: 511/2048 = 24.95% -> 24 -> grow
    ((2048, 511, 4096, {}), (GROW, 2148)),
    ((2048, 512, 4096, {}), (HOLD, None)),          # exactly 25%
    ((2048, 716, 4096, {}), (HOLD, None)),          # 34.96% -> 34
    ((2048, 737, 4096, {}), (HOLD, None)),          # 35.98% -> 35, not above 35
    ((2048, 738, 4096, {}), (SHRINK, 1998)),        # 36%
    # growth capped at the domain's maximum, then held
    ((4050, 100, 4096, {}), (GROW, 4096)),
    ((4096, 100, 4096, {}), (HOLD, None)),
    # a configured maximum lower than the domain's
    ((2048, 100, 4096, {"maximum_kib": 2100 * MIB}), (GROW, 2100)),
    ((2100, 100, 4096, {"maximum_kib": 2100 * MIB}), (HOLD, None)),
    # shrink stops where the step would cross the floor (the original's rule)
    ((349, 300, 4096, {}), (HOLD, None)),
    ((350, 300, 4096, {}), (SHRINK, 300)),
    ((1024, 900, 4096, {"critical_kib": 1000 * MIB}), (HOLD, None)),
    # steps and band from settings
    ((2048, 100, 4096, {"addram_kib": 512 * MIB}), (GROW, 2560)),
    ((2048, 1500, 4096, {"rmram_kib": 256 * MIB}), (SHRINK, 1792)),
    ((2048, 800, 4096, {"minimal": 40, "maximal": 60}), (GROW, 2148)),
    ((2048, 1300, 4096, {"minimal": 40, "maximal": 60}), (SHRINK, 1998)),
]


@pytest.mark.parametrize("inputs,expected", STEP_TABLE)
def test_step_table(inputs, expected):
    actual, usable, maximum, overrides = inputs
    s = DomainSettings(**overrides)
    d = decide(obs(actual, usable, maximum), s, History(), NOW)
    assert (d.action, None if d.target_kib is None else d.target_kib // MIB) == expected


def test_grow_reason_reads_like_the_log_line():
    d = decide(obs(2048, 370), DEFAULTS, History(), NOW)
    assert d.reason == "usable 18% < 25%"


# Safety rules: (observation, settings, history) -> (action, code)
SAFETY_TABLE = [
    (obs(), DomainSettings(exclude=True), History(), (SKIP, "excluded")),
    (obs(facts=None), DEFAULTS, History(), (WAIT, "no-xml")),
    (obs(facts=DomainFacts(windows="libosinfo os http://microsoft.com/win/10", balloon_model="virtio")),
     DEFAULTS, History(), (SKIP, "windows")),
    (obs(facts=DomainFacts(balloon_model="none")), DEFAULTS, History(), (SKIP, "no-balloon")),
    # no stats period: the guest's one report from boot, frozen, even if it looks recent
    (obs(facts=DomainFacts(balloon_model="virtio", stats_period_s=None)), DEFAULTS, History(), (SKIP, "no-period")),
    # the daemon switched the period on: nothing until a report newer than that
    (obs(age=1, stats_since=NOW - 0.5), DEFAULTS, History(), (WAIT, "stats-starting")),
    (obs(age=0, usable=100, stats_since=NOW - 1.5), DEFAULTS, History(), (GROW, "below-band")),
    (obs(facts=DomainFacts(balloon_model=None)), DEFAULTS, History(), (SKIP, "no-balloon")),
    (obs(usable=None), DEFAULTS, History(), (SKIP, "no-usable")),
    (obs(age=None), DEFAULTS, History(), (SKIP, "no-usable")),
    (obs(maximum=None), DEFAULTS, History(), (SKIP, "no-maximum")),
    (obs(actual=0, usable=0), DEFAULTS, History(), (SKIP, "no-size")),
    (obs(age=6), DEFAULTS, History(), (SKIP, "stale-stats")),
    (obs(age=-30), DEFAULTS, History(), (SKIP, "future-stats")),
    (obs(actual=1024, usable=2048), DEFAULTS, History(), (SKIP, "inconsistent")),
    (obs(), DEFAULTS, History(unresponsive=True), (SKIP, "unresponsive")),
    # a change at NOW-1 is not confirmed by stats stamped NOW-1.5 ...
    (obs(age=1.5), DEFAULTS, History(NOW - 1, 2048 * MIB, 2148 * MIB), (WAIT, "pending")),
    # ... nor by stats from the same second the change was made in
    (obs(age=0.2), DEFAULTS, History(NOW - 0.2, 2048 * MIB, 2148 * MIB), (WAIT, "pending")),
    # fresh stats, balloon still on its way, before the settle time
    (obs(actual=2100, age=0), DEFAULTS, History(NOW - 2, 2048 * MIB, 2148 * MIB), (WAIT, "moving")),
    # fresh stats, balloon never moved, settle time passed: leave it alone
    (obs(actual=2048, age=0), DEFAULTS, History(NOW - SETTLE_S - 1, 2048 * MIB, 2148 * MIB), (SKIP, "unresponsive")),
    # fresh stats, target reached: decide again
    (obs(actual=2148, usable=300, age=0), DEFAULTS, History(NOW - 2, 2048 * MIB, 2148 * MIB), (GROW, "below-band")),
    # moved part way and stopped: accept it and decide again
    (obs(actual=2100, usable=300, age=0), DEFAULTS, History(NOW - SETTLE_S - 1, 2048 * MIB, 2148 * MIB),
     (GROW, "below-band")),
    # Windows guests are balloned only when configured
    (obs(facts=DomainFacts(windows="hyperv enlightenments in <features>", balloon_model="virtio", stats_period_s=1),
         usable=100),
     DomainSettings(manage_windows=True), History(), (GROW, "below-band")),
]


@pytest.mark.parametrize("observation,s,history,expected", SAFETY_TABLE)
def test_safety_table(observation, s, history, expected):
    d = decide(observation, s, history, NOW, Limits(stale_after_s=5))
    assert (d.action, d.code) == expected


def test_unresponsive_is_remembered_and_pending_is_kept_while_waiting():
    stuck = decide(obs(actual=2048, age=0), DEFAULTS, History(NOW - 10, 2048 * MIB, 2148 * MIB), NOW)
    assert stuck.history.unresponsive
    waiting = History(NOW - 1, 2048 * MIB, 2148 * MIB)
    pending = lambda h: (h.changed_at, h.from_kib, h.target_kib)  # noqa: E731
    assert pending(decide(obs(age=1.5), DEFAULTS, waiting, NOW).history) == pending(waiting)
    assert decide(obs(age=30), DEFAULTS, waiting, NOW).history == waiting  # stale: still pending


# ------------------------------------------------------------------ invariants

sizes = st.integers(min_value=0, max_value=64 * 1024 * MIB)


@st.composite
def situations(draw):
    maximum = draw(st.integers(min_value=1, max_value=64 * 1024 * MIB) | st.none())
    actual = draw(sizes)
    usable = draw(sizes | st.none())
    stats = BalloonStats(name="vm", actual_kib=actual, maximum_kib=maximum, usable_kib=usable,
                         last_update=draw(st.none() | st.integers(min_value=int(NOW) - 100, max_value=int(NOW) + 100)))
    facts = draw(st.none() | st.builds(DomainFacts, windows=st.none() | st.just("hyperv"),
                                       balloon_model=st.sampled_from(["virtio", "none", None]),
                                       stats_period_s=st.none() | st.integers(1, 10)))
    stats_since = draw(st.none() | st.floats(min_value=NOW - 10, max_value=NOW))
    minimal = draw(st.floats(min_value=0, max_value=99, allow_nan=False))
    s = DomainSettings(
        minimal=minimal,
        maximal=draw(st.floats(min_value=minimal + 0.5, max_value=100)),
        critical_kib=draw(sizes), addram_kib=draw(st.integers(1, 8192 * MIB)),
        rmram_kib=draw(st.integers(1, 8192 * MIB)),
        maximum_kib=draw(st.none() | st.integers(1, 64 * 1024 * MIB)),
        exclude=draw(st.booleans()), manage_windows=draw(st.booleans()))
    changed_at = draw(st.none() | st.floats(min_value=NOW - 100, max_value=NOW))
    history = History(changed_at, draw(sizes), draw(sizes), draw(st.booleans())) if changed_at else History(
        unresponsive=draw(st.booleans()))
    return Observation(stats, facts, stats_since), s, history


@settings(max_examples=3000, deadline=None)
@given(situations())
def test_invariants(situation):
    observation, s, history = situation
    stats, facts = observation.stats, observation.facts
    d = decide(observation, s, history, NOW, Limits(stale_after_s=5))
    if not d.changes:
        assert d.target_kib is None
        return
    assert d.target_kib is not None and d.actual_kib == stats.actual_kib
    # never above the domain's (or the configured) maximum
    assert d.target_kib <= stats.maximum_kib
    if s.maximum_kib is not None:
        assert d.target_kib <= s.maximum_kib
    # never a shrink below the floor; grow really grows, shrink really shrinks
    if d.action == SHRINK:
        assert s.critical_kib <= d.target_kib < stats.actual_kib
    else:
        assert d.target_kib > stats.actual_kib
    # never on missing, stale or future stats, or on inconsistent ones
    assert stats.usable_kib is not None and stats.last_update is not None
    assert NOW - 5 <= stats.last_update <= NOW + 2
    assert stats.usable_kib <= stats.actual_kib
    # never an excluded, Windows, balloon-less or unresponsive domain
    assert not s.exclude and not history.unresponsive
    assert facts is not None and facts.balloon_model == "virtio"
    assert s.manage_windows or not facts.windows
    # never on figures frozen since boot, nor on any from before the period was switched on
    assert facts.stats_period_s is not None
    if observation.stats_since is not None:
        assert stats.last_update > observation.stats_since
    # never before stats newer than the last change
    if history.changed_at is not None:
        assert stats.last_update > history.changed_at
