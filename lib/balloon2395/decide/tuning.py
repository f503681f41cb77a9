"""The decision core's tunable constants, in one frozen record: what the rules take as given about
guests, balloons and hosts. `TUNING` is the one every rule reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    future_tolerance_s: float = 2.0  # host clock jitter between virsh's stamp and ours
    settle_s: float = 5.0  # a balloon that has not moved at all by then never will
    tolerance_kib: int = 1024  # 'reached the target': QEMU rounds to pages, guests lag a little
    deadband_kib: int = 32 * 1024  # target policy: smaller moves are churn, not control
    # Major faults also come from reading files; only a rate like this, with usable not
    # plentiful, says the guest is paging its working set back in.
    major_faults_per_s: int = 100
    # A guest whose idle daemons wake up swaps a few of their pages back in (up to 500 KiB/s seen on Debian 12
    # guests with swappiness 60); one short of memory swaps in MiBs a second.
    swap_in_kib_per_s: int = 1024
    grow_pad_kib: int = 64 * 1024  # a grow leaves this above the headroom, so the next 1 MiB is no new grow
    burst_decay_per_s: float = 0.999  # a burst is remembered for tens of minutes (half-life ~12 min)
    paged_hold_s: int = 600  # after the guest paged its working set back in, no shrink for this long
    # A guest paging or below its band may grow into this share of the host's reserve: an OOM kill in the
    # guest is sure, a host short of its reserve only may be (on a host that can swap; one that cannot keeps
    # all of its reserve, since out of RAM it kills a whole QEMU).
    urgent_reserve_share: float = 0.5
    # A host that cannot swap with less available than this share of its reserve is about to kill a whole QEMU:
    # the guests give back even what they use (an OOM kill inside one guest instead of a guest lost).
    oom_near_reserve_share: float = 0.5
    ran_out_decay_per_s: float = 0.9999  # half-life ~2 h: an OOM kill is dearer than a burst kept in headroom
    ran_out_min_kib: int = 64 * 1024  # with less usable, ordinary page faults could look like running out
    recent_reports: int = 10  # History.recent and HostView.host_recent: vdsm's mom.conf keeps 10 samples for StatAvg
    # A rise of used this large between two reports is a burst: what a guest that cannot page must be kept whole for.
    burst_rise_kib: int = 128 * 1024
    # idle_shrink needed: a guest shrunk while the host needed it gets its found size back only from what the
    # host can back beyond this share of its reserve; between 0 and that, neither the band nor a restore moves it
    restore_margin_share: float = 0.5


TUNING = Tuning()
