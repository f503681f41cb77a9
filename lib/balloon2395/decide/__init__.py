"""Deciding, pure: no I/O, no clock reads, nothing that does either imported. One cycle's decisions
(cycle.py) run the safety checks every domain must pass before any policy sees it (eligibility.py) over
its figures (figures.py) and what the daemon remembers of it (history.py), then the configured policy
over what passed: this daemon's rules (rules.py, fitted to the host by fit.py) or the peers' (peers.py),
and `bounded()` over every proposal last. records.py holds what a policy sees and proposes, tuning.py
the constants the rules take as given.
"""

from .cycle import POLICIES, decide, decide_all

__all__ = ["POLICIES", "decide", "decide_all"]
