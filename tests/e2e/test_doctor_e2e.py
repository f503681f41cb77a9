"""`balloon-2395 doctor` against real guests: what it finds in each is what the guest was made with.

Guests of other tests may run on the same host: the findings are read for this test's guests only (by
name, from --json), and the exit status only for what these guests make it (a FAIL of ours: 1).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Dict, List

from balloon2395_testkit.daemon_process import DAEMON
from balloon2395_testkit.guests import GuestFactory
from balloon2395_testkit.virsh_cli import URI


def doctor(factory: GuestFactory, *args: str) -> subprocess.CompletedProcess:
    config = factory.workdir / "doctor.yaml"
    config.write_text("stats_period: 1\n")  # never the host's /etc/balloon-2395/config.yaml
    return subprocess.run([str(DAEMON), "doctor", "--config", str(config), "--connect", URI, *args],
                          capture_output=True, text=True, timeout=120)


def findings_of(factory: GuestFactory) -> List[Dict[str, str]]:
    result = doctor(factory, "--json")
    assert result.returncode in (0, 1), result.stderr
    return [f for entry in json.loads(result.stdout) for f in entry["findings"]]


def by_check(findings: List[Dict[str, str]], name: str) -> Dict[str, str]:
    return {f["check"]: f["level"] for f in findings if f["subject"] == name}


def test_doctor_finds_each_guests_balloon_as_it_was_made(guest_factory, e2e_report):
    ok = guest_factory.create("doc-ok", current_mib=384, max_mib=512, autodeflate=True, free_page_reporting=True)
    nostats = guest_factory.create("doc-nostats", current_mib=384, max_mib=512, stats_period=None)
    nodriver = guest_factory.create("doc-nodriver", current_mib=384, max_mib=512, balloon_driver=False)
    noballoon = guest_factory.create("doc-noballoon", current_mib=384, max_mib=384, balloon_device=False)
    ok.wait_fresh_stats()
    shown = doctor(guest_factory)
    result = doctor(guest_factory, "--json")
    assert result.returncode == 1, result.stderr  # the guests without a driver or a device FAIL
    findings = [f for entry in json.loads(result.stdout) for f in entry["findings"]]
    assert by_check(findings, ok.name) == {
        "balloon-driver": "OK", "stats-period": "OK", "maximum": "OK", "autodeflate": "OK",
        "free-page-reporting": "OK"}
    assert by_check(findings, nostats.name)["balloon-driver"] == "OK"
    assert by_check(findings, nostats.name)["stats-period"] == "WARN"
    assert by_check(findings, nodriver.name)["balloon-driver"] == "FAIL"
    assert by_check(findings, noballoon.name) == {"balloon-device": "FAIL"}
    e2e_report(f"doctor on the test guests (exit {shown.returncode}):\n{shown.stdout}")


def test_the_command_doctor_gives_for_a_missing_stats_period_sets_it(guest_factory):
    g = guest_factory.create("doc-period", current_mib=384, max_mib=512, stats_period=None)
    (advice,) = [f["change"] for f in findings_of(guest_factory)
                 if f["subject"] == g.name and f["check"] == "stats-period"]
    ran = subprocess.run(shlex.split(advice), capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    g.wait_fresh_stats()
    assert by_check(findings_of(guest_factory), g.name)["stats-period"] == "OK"
    assert "<stats period='1'/>" in g.virsh("dumpxml", "--inactive", g.name).out  # kept for its next start
