"""The simulated host in virtual time: a scenario's guests, their balloons and the stats they last reported.

Time moves in ticks of 1/TICKS_PER_S s. Each guest reports stats every stats
period, at its own point in the second as real guests do, so what virsh shows
can be up to a period old; `actual` is always live (QEMU answers it itself).
A guest without a period shows its one report from boot until one is set.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import asdict
from typing import List

from .model import GuestState, HostMem, Stats, advance, boot, host_mem, report, set_target
from .scenario import GuestPlan, Scenario, load

TICKS_PER_S = 10
EPOCH = 1_800_000_000  # where virtual time starts unless told: a fixed second keeps runs reproducible
BOOT_REPORT_AGE_S = 600  # how long before the start guests without a stats period booted


class SimGuest:
    """One guest's runtime: the model state, its stats period and its last report."""

    __slots__ = ("plan", "uuid", "state", "period_s", "phase", "stats", "setmems")

    def __init__(self, plan: GuestPlan, seed: int, now: float) -> None:
        self.plan = plan
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"balloon-2395-sim/{plan.name}"))
        self.state: GuestState = boot(plan.spec, plan.current_kib)
        self.period_s = plan.stats_period_s
        self.phase = zlib.crc32(f"{seed}/{plan.name}".encode()) % TICKS_PER_S
        # The guest ran before the daemon started. Without a period, the driver's one report
        # from boot is all QEMU has, frozen.
        self.stats: Stats = report(plan.spec, self.state, now - (0 if self.period_s else BOOT_REPORT_AGE_S))
        self.setmems = 0

    @property
    def name(self) -> str:
        return self.plan.name

    def set_target(self, kib: int) -> None:
        self.state = set_target(self.state, kib)
        self.setmems += 1


class SimHost:
    def __init__(self, scenario: Scenario, seed: int = 0, epoch: float = EPOCH) -> None:
        self.scenario, self.seed, self.epoch = scenario, seed, epoch
        self.tick = 0
        self.guests: List[SimGuest] = [SimGuest(plan, seed, epoch) for plan in scenario.guests]

    @property
    def elapsed_s(self) -> float:
        return self.tick / TICKS_PER_S

    @property
    def now(self) -> float:
        return self.epoch + self.tick / TICKS_PER_S

    def step(self) -> None:
        self.tick += 1
        t, dt = self.elapsed_s, 1 / TICKS_PER_S
        for g in self.guests:
            plan = g.plan
            g.state = advance(plan.spec, g.state, dt, plan.workload_kib(t, self.seed), plan.trace.cache_kib(t),
                              plan.hot)
            if g.period_s and (self.tick - g.phase) % (g.period_s * TICKS_PER_S) == 0:
                g.stats = report(plan.spec, g.state, self.now)

    def advance_to(self, now: float) -> None:
        """Whole ticks up to `now` (wall time, for the virsh executable)."""
        ticks = int((now - self.epoch) * TICKS_PER_S)
        while self.tick < ticks:
            self.step()

    def memory(self) -> HostMem:
        return host_mem(self.scenario.host, [g.state for g in self.guests])

    def to_json(self) -> dict:
        return {"scenario": self.scenario.path, "seed": self.seed, "epoch": self.epoch, "tick": self.tick,
                "guests": [{"state": asdict(g.state), "period_s": g.period_s, "setmems": g.setmems,
                            "stats": asdict(g.stats)} for g in self.guests]}

    @classmethod
    def from_json(cls, data: dict) -> "SimHost":
        host = cls(load(data["scenario"]), data["seed"], data["epoch"])
        host.tick = data["tick"]
        for g, saved in zip(host.guests, data["guests"]):
            g.state, g.period_s, g.setmems = GuestState(**saved["state"]), saved["period_s"], saved["setmems"]
            g.stats = Stats(**saved["stats"])
        return host
