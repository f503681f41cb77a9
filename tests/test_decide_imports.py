"""The decision core is pure: importing it, in an interpreter that has loaded nothing else, loads no
module that does I/O or runs processes."""

import json
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"
CORE = ["balloon2395.decide", "balloon2395.decide.cycle", "balloon2395.decide.eligibility",
        "balloon2395.decide.figures", "balloon2395.decide.fit", "balloon2395.decide.history",
        "balloon2395.decide.peers", "balloon2395.decide.records", "balloon2395.decide.rules",
        "balloon2395.decide.tuning", "balloon2395.observation", "balloon2395.settings"]
# third-party I/O (virsh calls, the lock, the config file), processes, and this daemon's own I/O layers
FORBIDDEN = ["sh", "filelock", "yaml", "subprocess", "socket", "selectors", "threading",
             "balloon2395.virsh.commands", "balloon2395.virsh.session", "balloon2395.lock", "balloon2395.safefiles",
             "balloon2395.config", "balloon2395.observe", "balloon2395.host", "balloon2395.daemon"]


def loaded_by(module: str) -> set:
    # -I: no PYTHONPATH, no site-packages' .pth hooks, nothing the test run itself loaded
    code = (f"import importlib, json, sys; sys.path.insert(0, {str(LIB)!r}); importlib.import_module({module!r}); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_the_decision_core_loads_nothing_that_does_io():
    found = {module: sorted(set(FORBIDDEN) & loaded_by(module)) for module in CORE}
    assert {module: names for module, names in found.items() if names} == {}


def test_the_check_sees_what_an_io_layer_loads():
    # the same check on a module that runs virsh: it must find sh, else the test above proves nothing
    assert {"sh", "balloon2395.virsh.commands"} <= loaded_by("balloon2395.virsh.commands")
