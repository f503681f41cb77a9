"""Guest and host memory as Linux and a virtio balloon account for it: pure functions of virtual time.

A guest's `actual` size (what the balloon leaves it) is split, with nothing
left over, into: memory the guest kernel never counts in MemTotal (firmware,
kernel image, struct pages), unreclaimable kernel use, reclaimable slab,
resident anonymous memory, page cache and free memory. The balloon holds
`maximum - actual`. Anonymous memory that does not fit goes to swap; anonymous
demand beyond memory + swap gets the workload OOM-killed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence, Tuple

MIB = 1024  # KiB
PAGE_KIB = 4
CACHE_FLOOR_KIB = 16 * MIB  # mapped binaries and libraries: dropping them would only thrash
BALLOON_KIB_S = 1024 * MIB  # virtio balloon (in|de)flation on KVM runs at about 1 GiB/s
SWAP_KIB_S = 100 * MIB  # swap device throughput, shared by swap-in and swap-out
READ_KIB_S = 200 * MIB  # how fast a workload fills the page cache


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
    touched_kib: int = 0  # guest pages QEMU has backed: the guest's RSS on the host
    swap_in_kib: int = 0  # cumulative, like the guest's pswpin
    swap_out_kib: int = 0
    major_fault: int = 0
    minor_fault: int = 0
    oom_kills: int = 0
    # of those, kills no balloon could have prevented: the demand was more than even the
    # domain's maximum plus swap holds
    oom_kills_beyond_max: int = 0


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


def boot(spec: GuestSpec, current_kib: int) -> GuestState:
    """A guest running at `current_kib` that has touched all its memory at some point (as one that has
    been up for a while has); ValueError when that size cannot hold its kernel and services."""
    free = current_kib - spec.fixed_kib - spec.base_anon_kib - spec.boot_cache_kib
    if free < spec.min_free_kib:
        need = (current_kib - free + spec.min_free_kib) // MIB
        raise ValueError(f"{current_kib // MIB} MiB cannot hold the guest's kernel, services and cache ({need} MiB)")
    return GuestState(actual_kib=current_kib, target_kib=current_kib, anon_kib=spec.base_anon_kib, swapped_kib=0,
                      cache_kib=spec.boot_cache_kib, free_kib=free, touched_kib=current_kib)


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


def set_target(s: GuestState, target_kib: int) -> GuestState:
    return replace(s, target_kib=target_kib)


def report(spec: GuestSpec, s: GuestState, now: float) -> Stats:
    return Stats(last_update=int(now), usable_kib=usable_kib(spec, s), total_kib=s.actual_kib - spec.reserved_kib,
                 free_kib=s.free_kib, cache_kib=s.cache_kib, swap_in_kib=s.swap_in_kib,
                 swap_out_kib=s.swap_out_kib, major_fault=s.major_fault, minor_fault=s.minor_fault)


def _take(spec: GuestSpec, free: int, cache: int, want: int, keep_free: int) -> Tuple[int, int, int]:
    """Pages for `want` KiB: free memory above `keep_free` first, then page cache down to its floor.
    Returns (taken, free, cache)."""
    from_free = min(want, max(0, free - keep_free))
    from_cache = min(want - from_free, max(0, cache - spec.cache_floor_kib))
    return from_free + from_cache, free - from_free, cache - from_cache


def _release(anon: int, swapped: int, kib: int) -> Tuple[int, int, int]:
    """Anonymous memory freed by processes, resident and swapped in proportion.
    Returns (resident freed, anon, swapped)."""
    held = anon + swapped
    from_swap = kib * swapped // held if held else 0
    from_anon = kib - from_swap
    return from_anon, anon - from_anon, swapped - from_swap


def advance(spec: GuestSpec, s: GuestState, dt: float, workload_kib: int, cache_kib: int,
            hot: bool = True) -> GuestState:
    """The guest `dt` seconds later, its workload wanting `workload_kib` of anonymous memory on top of
    the services' and `cache_kib` of page cache on top of the boot cache. A `hot` workload keeps
    touching its memory, so swapped pages come back (or thrash when there is no room)."""
    killed = min(s.killed_kib, workload_kib)  # a restarted workload builds up again from nothing
    demand = spec.base_anon_kib + workload_kib - killed
    cache_goal = spec.boot_cache_kib + cache_kib
    if (s.actual_kib == s.target_kib and killed == s.killed_kib and demand == s.anon_kib + s.swapped_kib
            and not (hot and s.swapped_kib)
            and (s.cache_kib == cache_goal or (s.cache_kib < cache_goal and s.free_kib <= spec.high_wmark_kib))):
        return s  # nothing can move: most ticks of most guests
    actual, anon, swapped, cache, free = s.actual_kib, s.anon_kib, s.swapped_kib, s.cache_kib, s.free_kib
    swap_in, swap_out, major, minor = s.swap_in_kib, s.swap_out_kib, s.major_fault, s.minor_fault
    kills, beyond = s.oom_kills, s.oom_kills_beyond_max
    io_kib = int(SWAP_KIB_S * dt)

    # The balloon: deflating hands the guest free pages; inflating takes free pages, then drops
    # cache, and stalls there (the driver's allocations never swap or OOM the guest).
    move = min(abs(s.target_kib - actual), int(BALLOON_KIB_S * dt))
    if s.target_kib > actual:
        actual, free = actual + move, free + move
    elif move:
        taken, free, cache = _take(spec, free, cache, move, spec.min_free_kib)
        actual -= taken

    if demand > capacity_kib(spec, actual) and workload_kib > killed:
        # The OOM killer takes the workload: all it held is freed.
        freed, anon, swapped = _release(anon, swapped, max(0, anon + swapped - spec.base_anon_kib))
        free += freed
        beyond += demand > capacity_kib(spec, spec.maximum_kib)
        killed, demand, kills = workload_kib, spec.base_anon_kib, kills + 1
    held = anon + swapped
    if demand < held:
        freed, anon, swapped = _release(anon, swapped, held - demand)
        free += freed
    elif demand > held:
        taken, free, cache = _take(spec, free, cache, demand - held, spec.min_free_kib)
        out = min(demand - held - taken, spec.swap_kib - swapped, io_kib, anon)
        # Each page swapped out makes room for one new page: resident anon stays, swap grows.
        anon, swapped, swap_out, io_kib = anon + taken, swapped + out, swap_out + out, io_kib - out
        minor += (taken + out) // PAGE_KIB

    if hot and swapped and io_kib > 0:
        want = min(swapped, io_kib)
        got, free, cache = _take(spec, free, cache, want, spec.high_wmark_kib)
        thrash = want - got  # no room: each page brought in pushes another out
        anon, swapped = anon + got, swapped - got
        swap_in, swap_out = swap_in + want, swap_out + thrash
        major += want // PAGE_KIB

    if cache > cache_goal:
        cache, free = cache_goal, free + cache - cache_goal
    elif cache < cache_goal:
        grow = min(cache_goal - cache, int(READ_KIB_S * dt), max(0, free - spec.high_wmark_kib))
        cache, free, major = cache + grow, free - grow, major + grow // PAGE_KIB

    touched = min(max(s.touched_kib, actual - free), actual)
    return GuestState(actual, s.target_kib, anon, swapped, cache, free, killed, touched,
                      swap_in, swap_out, major, minor, kills, beyond)


@dataclass(frozen=True)
class HostSpec:
    total_kib: int
    own_kib: int  # the host's own kernel and services
    cache_kib: int = 0  # the host's page cache when it has room for it


@dataclass(frozen=True)
class HostMem:
    """The host at one instant. own + guests' RSS + cache + free = total, unless overcommitted."""

    total_kib: int
    own_kib: int
    guests_kib: int  # sum of the guests' sizes (actual)
    rss_kib: int  # what the guests really occupy
    cache_kib: int
    free_kib: int
    available_kib: int  # MemAvailable, leaving out the watermarks (small next to a host's memory)
    overcommit_kib: int  # guests' RSS the host cannot hold: it is swapping


def host_mem(spec: HostSpec, guests: Sequence[GuestState]) -> HostMem:
    rss = sum(g.touched_kib for g in guests)
    room = spec.total_kib - spec.own_kib - rss
    cache = min(spec.cache_kib, max(0, room))
    free = max(0, room - cache)
    return HostMem(spec.total_kib, spec.own_kib, sum(g.actual_kib for g in guests), rss, cache, free,
                   free + cache, max(0, -room))
