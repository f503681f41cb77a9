"""KSM (kernel samepage merging) and ballooning: said once at start, in one line.

With KSM merging guest pages, the memory a balloon takes back from a guest is
partly memory the host had already shared, so the host gains less than the
guest gives; and a grown guest that touches merged pages un-merges them, so
the host loses more than the grow. The band rule still holds per guest; only
the host's side of the accounting is blurred (its MemAvailable already shows
the merge). `ksm: refuse` is for hosts whose operators want one or the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

KSM_RUN = "/sys/kernel/mm/ksm/run"
# /sys/kernel/mm/ksm/run: 0 stopped, 1 merging, 2 stopped and pages un-merged
_STATES = {"0": "stopped", "1": "running", "2": "stopped (pages un-merged)"}


class KsmRefused(Exception):
    pass


@dataclass(frozen=True)
class KsmCheck:
    running: bool
    line: str  # what to log; empty: nothing worth saying


def check(mode: str, remote: bool, path: str = KSM_RUN) -> KsmCheck:
    """Raises KsmRefused when KSM merges and the config says `ksm: refuse`."""
    if mode == "ignore":
        return KsmCheck(False, "")
    if remote:
        return KsmCheck(False, "ksm: not checked (the hypervisor is another host)")
    state = _read(path)
    if state is None:
        return KsmCheck(False, "ksm: not available on this kernel (nothing to weigh)")
    if state != "1":
        return KsmCheck(False, f"ksm: {_STATES.get(state, state)}: ballooning frees exactly what it takes")
    if mode == "refuse":
        raise KsmRefused(f"ksm: running ({path} is 1) and the config says ksm: refuse; stop KSM "
                         "(echo 2 > /sys/kernel/mm/ksm/run) or set ksm: warn")
    return KsmCheck(True, "ksm: running: memory taken from guests may be shared already, so the host gains "
                          "less than the guests give (guest bands are unaffected; host figures show the merge)")


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None
