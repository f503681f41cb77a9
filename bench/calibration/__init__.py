"""The simulator's calibration against real guests, which only bench/ runs (and tests/ checks without a
guest): the plan a scenario makes and its simulation (plan.py), the replay on real guests (replay.py),
the comparison (compare.py) and its report (report.py); the scenarios replayed on Debian guests
(real_replay.py). The real-guest harness they drive is the testkit's."""
