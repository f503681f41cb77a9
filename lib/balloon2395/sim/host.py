"""The simulated host in virtual time: a scenario's guests, their balloons and the stats they last reported.

Time moves in ticks of 1/TICKS_PER_S s. Each guest reports stats every stats
period, at its own point in the second as real guests do, so what virsh shows
can be up to a period old; `actual` is always live (QEMU answers it itself).
A guest without a period shows its one report from boot until one is set.

After the guests move, each tick, the host holds its own use and their RSS:
beyond its RAM it swaps; beyond RAM and swap its OOM killer kills the QEMU
with the largest RSS, and that guest is lost for the rest of the run.
"""

from __future__ import annotations

import math
import uuid
import zlib
from dataclasses import asdict, replace
from typing import List, Optional

from .model import (
    TCG_REPORT_DELAY_S,
    GuestState,
    HostMem,
    Stats,
    advance,
    boot,
    host_mem,
    report,
    rss_kib,
    set_target,
)
from .scenario import GuestPlan, Scenario, load

TICKS_PER_S = 10
EPOCH = 1_800_000_000  # where virtual time starts unless told: a fixed second keeps runs reproducible
BOOT_REPORT_AGE_S = 600  # how long before the start guests without a stats period booted


class SimGuest:
    """One guest's runtime: the model state, its stats period and its last report."""

    __slots__ = ("plan", "uuid", "_state", "period_s", "phase", "stats", "setmems", "lost_at_s", "workload_kib",
                 "cache_kib", "inputs_until", "settled")

    def __init__(self, plan: GuestPlan, seed: int, now: float) -> None:
        self.plan = plan
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"balloon-2395-sim/{plan.name}"))
        # The workload's inputs to the model, read again once `inputs_until` (virtual s) has come. A guest
        # is settled when the model left it as it was: with the same inputs it would again, so it is not asked.
        self.workload_kib = self.cache_kib = -1
        self.inputs_until = -math.inf
        self.state = boot(plan.spec, plan.current_kib, plan.touched_kib)
        self.period_s = plan.stats_period_s
        self.phase = zlib.crc32(f"{seed}/{plan.name}".encode()) % TICKS_PER_S
        # The guest ran before the daemon started. Without a period, the driver's one report
        # from boot is all QEMU has, frozen.
        self.stats: Stats = report(plan.spec, self.state, now - (0 if self.period_s else BOOT_REPORT_AGE_S))
        self.setmems = 0
        self.lost_at_s: Optional[float] = None  # when the host's OOM killer killed its QEMU

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def state(self) -> GuestState:
        return self._state

    @state.setter
    def state(self, state: GuestState) -> None:
        self._state, self.settled = state, False

    @property
    def report_ticks(self) -> int:
        """Ticks between two reports: QEMU asks again a period after the guest's last answer, and an emulated
        guest answers late."""
        return round((self.period_s + (TCG_REPORT_DELAY_S if self.plan.spec.emulated else 0)) * TICKS_PER_S)

    @property
    def rss_kib(self) -> int:
        return rss_kib(self.plan.spec, self._state)

    def set_target(self, kib: int) -> None:
        self.state = set_target(self.state, kib)
        self.setmems += 1

    def move(self, t: float, dt: float, seed: int) -> bool:
        """The model `dt` later, its workload as of `t`; whether it moved."""
        if t >= self.inputs_until - 1e-6:  # a tick's time is a float: near the change, read again
            workload, cache, self.inputs_until = self.plan.inputs(t, seed)
            if (workload, cache) != (self.workload_kib, self.cache_kib):
                self.workload_kib, self.cache_kib, self.settled = workload, cache, False
        if self.settled:
            return False
        before = self._state
        self._state = advance(self.plan.spec, before, dt, self.workload_kib, self.cache_kib, self.plan.hot)
        self.settled = self._state is before  # the model hands back the same object when nothing moved
        return not self.settled

    def lose(self, at_s: float) -> None:
        """Its QEMU killed: it holds nothing of the host's any more, and never runs again."""
        self.state = replace(self.state, touched_kib=0)
        self.lost_at_s = at_s


class SimHost:
    def __init__(self, scenario: Scenario, seed: int = 0, epoch: float = EPOCH) -> None:
        self.scenario, self.seed, self.epoch = scenario, seed, epoch
        self.tick = 0
        self.guests: List[SimGuest] = [SimGuest(plan, seed, epoch) for plan in scenario.guests]
        self.running: List[SimGuest] = list(self.guests)  # the guests not lost
        self.swapping = False  # in the last tick
        self.swap_ticks = 0
        self.guests_rss_kib: Optional[int] = None  # of the running guests, as of the last tick; None: to add up

    @property
    def elapsed_s(self) -> float:
        return self.tick / TICKS_PER_S

    @property
    def now(self) -> float:
        return self.epoch + self.tick / TICKS_PER_S

    def step(self) -> None:
        self.tick += 1
        t, dt = self.elapsed_s, 1 / TICKS_PER_S
        moved = False
        for g in self.running:
            moved = g.move(t, dt, self.seed) or moved
            if g.period_s and (self.tick - g.phase) % g.report_ticks == 0:
                g.stats = report(g.plan.spec, g.state, self.now)
        if moved or self.guests_rss_kib is None:
            self.guests_rss_kib = sum(g.rss_kib for g in self.running)
        self._host_oom(self.guests_rss_kib)

    def _host_oom(self, rss_kib: int) -> None:
        """The host's RAM and swap against its own use and the guests' RSS; beyond both, its OOM
        killer kills the QEMU with the largest RSS, until the rest fits."""
        spec = self.scenario.host
        need = self.scenario.host_own_kib(self.elapsed_s) + rss_kib
        self.swapping = need > spec.total_kib
        self.swap_ticks += self.swapping
        while need > spec.total_kib + spec.swap_kib:
            victim = max(self.running, key=lambda g: g.rss_kib)
            need -= victim.rss_kib
            victim.lose(self.elapsed_s)
            self.running.remove(victim)
            self.guests_rss_kib = None

    def advance_to(self, now: float) -> None:
        """Whole ticks up to `now` (wall time, for the virsh executable)."""
        ticks = int((now - self.epoch) * TICKS_PER_S)
        while self.tick < ticks:
            self.step()

    def meminfo(self) -> str:
        """The host's /proc/meminfo, the lines the daemon reads."""
        mem, swap = self.memory(), self.scenario.host.swap_kib
        return "".join(f"{key + ':':<16}{kib:>8} kB\n" for key, kib in (
            ("MemTotal", mem.total_kib), ("MemFree", mem.free_kib), ("MemAvailable", mem.available_kib),
            ("Cached", mem.cache_kib), ("SwapTotal", swap), ("SwapFree", max(swap - mem.swapped_kib, 0))))

    def memory(self) -> HostMem:
        spec = replace(self.scenario.host, own_kib=self.scenario.host_own_kib(self.elapsed_s))
        return host_mem(spec, [(g.plan.spec, g.state) for g in self.running])

    def to_json(self) -> dict:
        return {"scenario": self.scenario.path, "seed": self.seed, "epoch": self.epoch, "tick": self.tick,
                "swapping": self.swapping, "swap_ticks": self.swap_ticks,
                "guests": [{"state": asdict(g.state), "period_s": g.period_s, "setmems": g.setmems,
                            "stats": asdict(g.stats), "lost_at_s": g.lost_at_s} for g in self.guests]}

    @classmethod
    def from_json(cls, data: dict) -> "SimHost":
        host = cls(load(data["scenario"]), data["seed"], data["epoch"])
        host.tick, host.swapping, host.swap_ticks = data["tick"], data["swapping"], data["swap_ticks"]
        for g, saved in zip(host.guests, data["guests"]):
            g.state, g.period_s, g.setmems = GuestState(**saved["state"]), saved["period_s"], saved["setmems"]
            g.stats, g.lost_at_s = Stats(**saved["stats"]), saved["lost_at_s"]
        host.running = [g for g in host.guests if g.lost_at_s is None]
        return host
