"""Guest and host memory as Linux and a virtio balloon account for it: pure functions of virtual time.

A guest's `actual` size (what the balloon leaves it) is split, with nothing
left over, into: memory the guest kernel never counts in MemTotal (firmware,
kernel image, struct pages), unreclaimable kernel use, reclaimable slab,
resident anonymous memory, page cache and free memory. The balloon holds
`maximum - actual`. Anonymous memory that does not fit goes to swap; anonymous
demand beyond memory + swap gets the workload OOM-killed, unless the balloon
deflates on OOM.

What a guest costs its host is its QEMU's RSS: the guest pages QEMU has backed
(`touched`), and QEMU's own memory (known under software emulation only).
Every page outside the free memory is touched; free pages are touched or not.
The balloon takes touched free pages back from the host; free page reporting
returns the guest's touched free pages by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple

from ..units import PAGE_KIB

MIB = 1024  # KiB
CACHE_FLOOR_KIB = 16 * MIB  # mapped binaries and libraries: dropping them would only thrash
BALLOON_KIB_S = 1024 * MIB  # virtio balloon (in|de)flation on KVM runs at about 1 GiB/s
SWAP_KIB_S = 100 * MIB  # swap device throughput, shared by swap-in and swap-out
READ_KIB_S = 200 * MIB  # how fast a workload fills the page cache
# mm/page_reporting.c: a reporting pass runs 2 s after pages are freed, and reports all free pages then
FPR_DELAY_S = 2.0
OOM_DEFLATE_KIB = 1 * MIB  # virtio_balloon's VIRTIO_BALLOON_OOM_NR_PAGES: what one OOM notification releases
# Software emulation (TCG: the real guests of bench/real.py and bench/calibrate.py, on machines without KVM)
# differs from KVM in three figures the model needs, fitted to those guests
# (docs/simulator.md#calibration-the-simulator-against-real-guests): QEMU's own resident memory beside the
# guest's pages, mostly its translation cache (bounded at 64 MiB for those guests); how fast a workload can
# fault new memory in; how late a busy guest answers QEMU's stats request. Under KVM none is measured here:
# QEMU's own memory is left out, faults and answers are immediate.
TCG_QEMU_OWN_KIB = 140 * MIB
TCG_FAULT_KIB_S = 50 * MIB
TCG_REPORT_DELAY_S = 0.8  # a busy emulated guest answers QEMU's stats request this late


def _min_free_kib(lowmem_kib: int) -> int:
    # mm/page_alloc.c: min_free_kbytes = sqrt(lowmem_kbytes * 16), clamped.
    return min(max(math.isqrt(lowmem_kib * 16), 128), 262144)


@dataclass(frozen=True)
class GuestSpec:
    """What does not change while a guest runs. Watermarks are fixed at boot, from the boot (maximum) size."""

    name: str
    maximum_kib: int
    base_anon_kib: int = 64 * MIB  # the guest's own services, idle
    boot_cache_kib: int = 64 * MIB
    swap_kib: int = 0
    slab_kib: int = 16 * MIB  # reclaimable slab (dentries, inodes)
    deflate_on_oom: bool = False  # <memballoon autodeflate='on'>: under OOM the guest takes balloon pages back
    free_page_reporting: bool = False  # <memballoon freePageReporting='on'>: free pages go back to the host
    emulated: bool = False  # QEMU runs it under software emulation (TCG), not KVM
    reserved_kib: int = field(init=False)  # never in MemTotal: firmware, kernel image, struct pages
    kernel_kib: int = field(init=False)  # unreclaimable: page tables, stacks, unreclaimable slab
    min_free_kib: int = field(init=False)
    low_wmark_kib: int = field(init=False)
    high_wmark_kib: int = field(init=False)
    cache_floor_kib: int = field(init=False)

    def __post_init__(self) -> None:
        reserved = 16 * MIB + self.maximum_kib // 64  # 64-byte struct page per 4 KiB page
        min_free = _min_free_kib(self.maximum_kib - reserved)
        # watermark_scale_factor 10: the gap between watermarks is 0.1% of memory, at least min/4
        gap = max(min_free // 4, (self.maximum_kib - reserved) // 1000)
        for name, value in (("reserved_kib", reserved), ("kernel_kib", 24 * MIB + self.maximum_kib // 128),
                            ("min_free_kib", min_free), ("low_wmark_kib", min_free + gap),
                            ("high_wmark_kib", min_free + 2 * gap),
                            ("cache_floor_kib", min(CACHE_FLOOR_KIB, self.boot_cache_kib))):
            object.__setattr__(self, name, value)

    @property
    def qemu_own_kib(self) -> int:
        """QEMU's own memory beside the guest's pages: known under software emulation only."""
        return TCG_QEMU_OWN_KIB if self.emulated else 0

    @property
    def fixed_kib(self) -> int:
        """Used whatever the workload does."""
        return self.reserved_kib + self.kernel_kib + self.slab_kib


@dataclass(frozen=True)
class GuestState:
    """One guest at one instant. actual = fixed + anon + cache + free, always."""

    actual_kib: int
    target_kib: int  # the balloon's target (setmem); actual moves toward it
    anon_kib: int  # resident anonymous memory
    swapped_kib: int  # anonymous memory in swap
    cache_kib: int
    free_kib: int
    killed_kib: int = 0  # the workload's demand that died with OOM-killed processes
    touched_kib: int = 0  # guest pages QEMU has backed: the guest's RSS on the host; >= actual - free
    swap_in_kib: int = 0  # cumulative, like the guest's pswpin
    swap_out_kib: int = 0
    major_fault: int = 0
    minor_fault: int = 0
    oom_kills: int = 0
    # of those, kills no balloon could have prevented: the demand was more than even the
    # domain's maximum plus swap holds
    oom_kills_beyond_max: int = 0
    oom_deflations: int = 0  # times the balloon deflated on OOM instead of a kill (runs of ticks count once)
    oom_deflating: bool = False  # it deflated on OOM in the last tick
    fpr_wait_s: float = 0.0  # free page reporting: seconds until its pass reports the free pages; 0: none due


@dataclass(frozen=True)
class Stats:
    """What the guest last reported through the balloon's stats queue (virsh dommemstat's guest figures)."""

    last_update: int  # epoch seconds
    usable_kib: int  # MemAvailable
    total_kib: int  # MemTotal, virsh's 'available'
    free_kib: int  # MemFree, virsh's 'unused'
    cache_kib: int  # virsh's 'disk_caches'
    swap_in_kib: int
    swap_out_kib: int
    major_fault: int
    minor_fault: int


def boot(spec: GuestSpec, current_kib: int, touched_kib: Optional[int] = None) -> GuestState:
    """A guest running at `current_kib` whose RSS is `touched_kib` (default: all of it, as for a guest
    that has been up for a while); ValueError when that size cannot hold its kernel and services, or
    when that RSS is more than its size or less than what it uses."""
    free = current_kib - spec.fixed_kib - spec.base_anon_kib - spec.boot_cache_kib
    if free < spec.min_free_kib:
        need = (current_kib - free + spec.min_free_kib) // MIB
        raise ValueError(f"{current_kib // MIB} MiB cannot hold the guest's kernel, services and cache ({need} MiB)")
    touched = current_kib if touched_kib is None else touched_kib
    if touched > current_kib:
        raise ValueError(f"RSS above the guest's size ({touched // MIB} > {current_kib // MIB} MiB)")
    if touched < current_kib - free:  # every page outside the free memory has been touched
        raise ValueError(f"RSS below what the guest's kernel, services and cache use ({touched // MIB} < "
                         f"{(current_kib - free) // MIB} MiB)")
    # a reporting guest's touched free pages go back at its next pass
    wait = FPR_DELAY_S if spec.free_page_reporting and touched > current_kib - free else 0.0
    return GuestState(actual_kib=current_kib, target_kib=current_kib, anon_kib=spec.base_anon_kib, swapped_kib=0,
                      cache_kib=spec.boot_cache_kib, free_kib=free, touched_kib=touched, fpr_wait_s=wait)


def usable_kib(spec: GuestSpec, s: GuestState) -> int:
    """MemAvailable as mm/show_mem.c computes it: free above the reserves, plus the cache and slab
    it could drop, minus what reclaim would have to leave (half, up to the low watermark)."""
    low = spec.low_wmark_kib
    available = s.free_kib - spec.high_wmark_kib
    available += s.cache_kib - min(s.cache_kib // 2, low)
    available += spec.slab_kib - min(spec.slab_kib // 2, low)
    return max(0, available)


def capacity_kib(spec: GuestSpec, actual_kib: int) -> int:
    """The most anonymous memory a guest of this size can hold, resident or swapped: beyond it, OOM."""
    return actual_kib - spec.fixed_kib - spec.cache_floor_kib - spec.min_free_kib + spec.swap_kib


def rss_kib(spec: GuestSpec, s: GuestState) -> int:
    """What the guest costs its host: the guest pages QEMU has backed, and QEMU's own memory."""
    return s.touched_kib + spec.qemu_own_kib


def set_target(s: GuestState, target_kib: int) -> GuestState:
    return replace(s, target_kib=target_kib)


def report(spec: GuestSpec, s: GuestState, now: float) -> Stats:
    # With deflate-on-oom the driver leaves totalram alone: MemTotal stays that of the maximum.
    total = (spec.maximum_kib if spec.deflate_on_oom else s.actual_kib) - spec.reserved_kib
    return Stats(last_update=int(now), usable_kib=usable_kib(spec, s), total_kib=total,
                 free_kib=s.free_kib, cache_kib=s.cache_kib, swap_in_kib=s.swap_in_kib,
                 swap_out_kib=s.swap_out_kib, major_fault=s.major_fault, minor_fault=s.minor_fault)


def _release(anon: int, swapped: int, kib: int) -> Tuple[int, int, int]:
    """Anonymous memory freed by processes, resident and swapped in proportion.
    Returns (resident freed, anon, swapped)."""
    held = anon + swapped
    from_swap = kib * swapped // held if held else 0
    from_anon = kib - from_swap
    return from_anon, anon - from_anon, swapped - from_swap


class _Moving:
    """One guest's state while `advance` moves it: GuestState's fields, mutable."""

    __slots__ = ("actual", "target", "anon", "swapped", "cache", "free", "killed", "touched", "swap_in", "swap_out",
                 "major", "minor", "kills", "beyond", "deflations", "was_deflating", "deflating", "wait")

    def __init__(self, s: GuestState, killed: int) -> None:
        self.actual, self.target, self.anon, self.swapped = s.actual_kib, s.target_kib, s.anon_kib, s.swapped_kib
        self.cache, self.free, self.killed, self.touched = s.cache_kib, s.free_kib, killed, s.touched_kib
        self.swap_in, self.swap_out, self.major = s.swap_in_kib, s.swap_out_kib, s.major_fault
        self.minor, self.kills, self.beyond = s.minor_fault, s.oom_kills, s.oom_kills_beyond_max
        self.deflations, self.was_deflating, self.deflating = s.oom_deflations, s.oom_deflating, False
        self.wait = s.fpr_wait_s

    def state(self) -> GuestState:
        return GuestState(self.actual, self.target, self.anon, self.swapped, self.cache, self.free, self.killed,
                          self.touched, self.swap_in, self.swap_out, self.major, self.minor, self.kills, self.beyond,
                          self.deflations, self.deflating, self.wait)

    def take(self, spec: GuestSpec, want: int, keep_free: int) -> int:
        """Pages for `want` KiB: free memory above `keep_free` first, then page cache down to its floor."""
        from_free = min(want, max(0, self.free - keep_free))
        from_cache = min(want - from_free, max(0, self.cache - spec.cache_floor_kib))
        self.free, self.cache = self.free - from_free, self.cache - from_cache
        return from_free + from_cache

    def balloon(self, spec: GuestSpec, dt: float) -> None:
        """The balloon toward its target. Deflating hands the guest pages QEMU has not backed: no RSS
        until they are used. Inflating takes free pages, touched ones first (the guest's free lists
        hand out the most recently freed pages first), then drops cache, and stalls there (the
        driver's allocations never swap or OOM the guest); the touched pages it takes leave the RSS."""
        move = min(abs(self.target - self.actual), int(BALLOON_KIB_S * dt))
        if self.target > self.actual:
            self.actual, self.free = self.actual + move, self.free + move
        elif move:
            touched_free, free = self.free - (self.actual - self.touched), self.free
            taken = self.take(spec, move, spec.min_free_kib)
            from_free = free - self.free
            self.actual -= taken
            self.touched -= min(from_free, touched_free) + taken - from_free

    def out_of_memory(self, spec: GuestSpec, demand: int, workload_kib: int) -> int:
        """Demand beyond what the guest can hold: the balloon deflates on OOM while it can, then the
        OOM killer takes the workload (all it held is freed). Returns the demand left."""
        short = demand - capacity_kib(spec, self.actual)
        if short > 0 and spec.deflate_on_oom and self.actual < spec.maximum_kib:
            # Each OOM notification releases OOM_DEFLATE_KIB and the allocation retries: the guest
            # grows at once, by just enough; the driver does not inflate again by itself.
            grow = min(-(-short // OOM_DEFLATE_KIB) * OOM_DEFLATE_KIB, spec.maximum_kib - self.actual)
            self.actual, self.free, short = self.actual + grow, self.free + grow, short - grow
            self.target = max(self.target, self.actual)
            self.deflations += not self.was_deflating
            self.deflating = True
        if short <= 0:
            return demand
        # Before the OOM killer came, the workload faulted in what the guest could still give it.
        self.minor += max(0, capacity_kib(spec, self.actual) - self.anon - self.swapped) // PAGE_KIB
        freed, self.anon, self.swapped = _release(self.anon, self.swapped,
                                                  max(0, self.anon + self.swapped - spec.base_anon_kib))
        self.free += freed
        self.beyond += demand > capacity_kib(spec, spec.maximum_kib)
        self.killed, self.kills = workload_kib, self.kills + 1
        return spec.base_anon_kib

    def anon_to(self, spec: GuestSpec, demand: int, io_kib: int) -> int:
        """Anonymous memory toward the demand: freed, or taken from free memory and cache, then made
        room for by swapping out. Returns the swap I/O left in this tick."""
        held = self.anon + self.swapped
        if demand < held:
            freed, self.anon, self.swapped = _release(self.anon, self.swapped, held - demand)
            self.free += freed
        elif demand > held:
            taken = self.take(spec, demand - held, spec.min_free_kib)
            out = min(demand - held - taken, spec.swap_kib - self.swapped, io_kib, self.anon)
            # Each page swapped out makes room for one new page: resident anon stays, swap grows.
            self.anon, self.swapped, self.swap_out = self.anon + taken, self.swapped + out, self.swap_out + out
            self.minor += (taken + out) // PAGE_KIB
            io_kib -= out
        return io_kib

    def swap_back(self, spec: GuestSpec, io_kib: int) -> None:
        """A hot workload's swapped pages come back; with no room, each page brought in pushes another out."""
        want = min(self.swapped, io_kib)
        got = self.take(spec, want, spec.high_wmark_kib)
        self.anon, self.swapped = self.anon + got, self.swapped - got
        self.swap_in, self.swap_out = self.swap_in + want, self.swap_out + want - got
        self.major += want // PAGE_KIB

    def cache_to(self, spec: GuestSpec, goal: int, dt: float) -> None:
        if self.cache > goal:
            self.cache, self.free = goal, self.free + self.cache - goal
        elif self.cache < goal:
            grow = min(goal - self.cache, int(READ_KIB_S * dt), max(0, self.free - spec.high_wmark_kib))
            self.cache, self.free, self.major = self.cache + grow, self.free - grow, self.major + grow // PAGE_KIB

    def rss(self, spec: GuestSpec, dt: float) -> None:
        """Allocations take touched free pages first, so the RSS grows only by the untouched pages they
        needed. With free page reporting, a pass FPR_DELAY_S after pages were freed returns every
        touched free page to the host (page cache is not free: it stays)."""
        self.touched = max(self.touched, self.actual - self.free)
        if not spec.free_page_reporting:
            return
        if self.wait:
            self.wait -= dt
            if self.wait < 1e-6:  # due (the sum of the ticks' dt is not exact)
                self.touched, self.wait = self.actual - self.free, 0.0
        elif self.touched > self.actual - self.free:
            self.wait = FPR_DELAY_S


def advance(spec: GuestSpec, s: GuestState, dt: float, workload_kib: int, cache_kib: int,
            hot: bool = True) -> GuestState:
    """The guest `dt` seconds later, its workload wanting `workload_kib` of anonymous memory on top of
    the services' and `cache_kib` of page cache on top of the boot cache. A `hot` workload keeps
    touching its memory, so swapped pages come back (or thrash when there is no room)."""
    killed = min(s.killed_kib, workload_kib)  # a restarted workload builds up again from nothing
    demand = spec.base_anon_kib + workload_kib - killed
    if spec.emulated:  # an emulated guest faults its new memory in no faster than TCG_FAULT_KIB_S
        demand = min(demand, s.anon_kib + s.swapped_kib + int(TCG_FAULT_KIB_S * dt))
    cache_goal = spec.boot_cache_kib + cache_kib
    if (s.actual_kib == s.target_kib and killed == s.killed_kib and demand == s.anon_kib + s.swapped_kib
            and not (hot and s.swapped_kib) and not s.fpr_wait_s and not s.oom_deflating
            and (s.cache_kib == cache_goal or (s.cache_kib < cache_goal and s.free_kib <= spec.high_wmark_kib))):
        return s  # nothing can move: most ticks of most guests
    m = _Moving(s, killed)
    m.balloon(spec, dt)
    if workload_kib > killed:
        demand = m.out_of_memory(spec, demand, workload_kib)
    io_kib = m.anon_to(spec, demand, int(SWAP_KIB_S * dt))
    if hot and m.swapped and io_kib > 0:
        m.swap_back(spec, io_kib)
    m.cache_to(spec, cache_goal, dt)
    m.rss(spec, dt)
    return m.state()


@dataclass(frozen=True)
class HostSpec:
    total_kib: int
    own_kib: int  # the host's own kernel and services
    cache_kib: int = 0  # the host's page cache when it has room for it
    swap_kib: int = 0


@dataclass(frozen=True)
class HostMem:
    """The host at one instant. own + guests' RSS + cache + free = total, unless it swaps."""

    total_kib: int
    own_kib: int
    guests_kib: int  # sum of the guests' sizes (actual)
    rss_kib: int  # what the guests really occupy
    cache_kib: int
    free_kib: int
    available_kib: int  # MemAvailable, leaving out the watermarks (small next to a host's memory)
    swapped_kib: int  # what the host's RAM cannot hold of its own use and the guests' RSS: in its swap


def host_mem(spec: HostSpec, guests: Sequence[Tuple[GuestSpec, GuestState]]) -> HostMem:
    """The host holding its own use and the guests' RSS (the guests still running)."""
    rss = sum(rss_kib(g, s) for g, s in guests)
    room = spec.total_kib - spec.own_kib - rss
    cache = min(spec.cache_kib, max(0, room))
    free = max(0, room - cache)
    return HostMem(spec.total_kib, spec.own_kib, sum(s.actual_kib for _, s in guests), rss, cache, free,
                   free + cache, max(0, -room))
