"""`doctor`: the checks as a table (facts in, findings out), the facts it reads from the domain XML, the
lock directory's check, and the command as an operator runs it against the fake virsh (read-only, exit
status, escaped names, JSON)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from typing import Dict, Optional, Tuple

import pytest

from balloon2395 import config as cfg, doctor
from balloon2395.doctor import FAIL, HOST, OK, WARN, Finding, Guest, Host, Reading, diagnose
from balloon2395.lifetime import READ_LINE
from balloon2395.observation import HostMemory
from balloon2395.settings import DomainSettings
from balloon2395.virsh.domain_xml import parse_domain_xml
from balloon2395.virsh.output import parse_domstats
from conftest import FIXTURES, GIB, domain, run_cli, uuid_of

VIRSH = FIXTURES / "virsh"
# A healthy guest as real virsh showed it: virtio balloon, stats period 1, autodeflate and free page
# reporting on, 384 of 512 MiB.
GOOD_XML = (VIRSH / "dumpxml-autodeflate-fpr.xml").read_text()
GOOD = parse_domstats((VIRSH / "domstats-balloon-domain.autodeflate-fpr.stdout").read_text())[0]
NO_DRIVER = parse_domstats((VIRSH / "domstats-balloon-domain.no-driver.stdout").read_text())[0]
NO_DEVICE = parse_domstats((VIRSH / "domstats-balloon-domain.no-balloon-device.stdout").read_text())[0]
NOW = float(GOOD.last_update) + 1
UUID = "0b5e7e6a-4f55-4c1c-9d4e-3a1f4c0d2b11"

# What libvirt writes for a PCI device passed through, an SR-IOV VF as a network interface, and the
# memory backing elements (libvirt's own element order: memoryBacking after currentMemory, hostdev and
# interface before memballoon).
HOSTDEV = """    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source>
        <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
      </source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </hostdev>
"""
VF = """    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:6d:90:02'/>
      <driver name='vfio'/>
      <source>
        <address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x2'/>
      </source>
      <alias name='hostdev1'/>
    </interface>
"""
USB = """    <hostdev mode='subsystem' type='usb' managed='yes'>
      <source>
        <vendor id='0x046d'/>
        <product id='0xc52b'/>
      </source>
    </hostdev>
"""


def with_devices(xml: str, devices: str) -> str:
    return xml.replace("    <memballoon ", devices + "    <memballoon ", 1)


def with_backing(xml: str, *elements: str) -> str:
    backing = "  <memoryBacking>\n" + "".join(f"    <{e}/>\n" for e in elements) + "  </memoryBacking>\n"
    return re.sub(r"(  <currentMemory [^\n]*\n)", lambda m: m.group(1) + backing, xml, count=1)


def without_balloon(xml: str) -> str:
    return re.sub(r"    <memballoon .*?</memballoon>\n", "    <memballoon model='none'/>\n", xml, flags=re.S)


def host_facts(**changes) -> Host:
    memory = HostMemory(total_kib=16 * GIB, available_kib=8 * GIB, reserve_kib=GIB, swap_free_kib=4 * GIB)
    base = Host(remote=False, memory=memory, memory_source="local", ksm_running=False,
                ksm_line="stopped: ballooning frees exactly what it takes", lock_dir="/run/balloon-2395",
                lock_dir_problem=None)
    return replace(base, **changes)


def guest(xml: Optional[str] = GOOD_XML, stats=GOOD, name: Optional[str] = None, **changes) -> Guest:
    stats = stats if name is None else replace(stats, name=name)
    facts = None if xml is None else parse_domain_xml(xml)
    return replace(Guest(stats, DomainSettings(), UUID, facts), **changes)


def reading(*guests: Guest, **changes) -> Reading:
    return replace(Reading("qemu:///system", None, host_facts(), tuple(guests), now=NOW), **changes)


def levels(findings, subject: str) -> Dict[str, str]:
    return {f.check: f.level for f in findings if f.subject == subject}


def the(findings, subject: str, check: str) -> Finding:
    (found,) = [f for f in findings if f.subject == subject and f.check == check]
    return found


# ------------------------------------------------------------------ the guest checks

ALL_OK = {"balloon-driver": OK, "stats-period": OK, "maximum": OK, "autodeflate": OK, "free-page-reporting": OK}

GUEST_CASES = [
    ("healthy", guest(), ALL_OK),
    ("pci passthrough", guest(with_devices(GOOD_XML, HOSTDEV)), {"vfio": FAIL, **ALL_OK}),
    ("an SR-IOV VF", guest(with_devices(GOOD_XML, VF)), {"vfio": FAIL, **ALL_OK}),
    ("a USB device is no passthrough of memory", guest(with_devices(GOOD_XML, USB)), ALL_OK),
    ("hugepages", guest(with_backing(GOOD_XML, "hugepages")), {"hugepages": FAIL, **ALL_OK}),
    ("locked", guest(with_backing(GOOD_XML, "locked")), {"locked": FAIL, **ALL_OK}),
    ("memballoon none", guest(without_balloon(GOOD_XML), NO_DEVICE), {"balloon-device": FAIL}),
    ("no memballoon at all", guest(re.sub(r"    <memballoon .*?</memballoon>\n", "", GOOD_XML, flags=re.S),
                                   NO_DEVICE), {"balloon-device": FAIL}),
    ("device without its driver", guest(stats=NO_DRIVER), {"balloon-driver": FAIL}),
    ("no stats at all", guest(stats=replace(GOOD, usable_kib=None, available_kib=None, last_update=None)),
     {"balloon-driver": FAIL}),
    ("available without usable (Linux < 4.6)", guest(stats=replace(GOOD, usable_kib=None)),
     {"balloon-driver": FAIL}),
    ("current above maximum", guest(stats=replace(GOOD, actual_kib=GOOD.maximum_kib + 4)),
     {"balloon-driver": FAIL}),
    ("no stats period", guest(GOOD_XML.replace("      <stats period='1'/>\n", "")),
     {**ALL_OK, "stats-period": WARN}),
    ("stale report", guest(stats=replace(GOOD, last_update=int(NOW) - 60)), {**ALL_OK, "stats-period": WARN}),
    ("report from the future", guest(stats=replace(GOOD, last_update=int(NOW) + 3600)),
     {**ALL_OK, "stats-period": WARN}),
    ("at its maximum", guest(stats=replace(GOOD, actual_kib=GOOD.maximum_kib)), {**ALL_OK, "maximum": WARN}),
    ("autodeflate off", guest(GOOD_XML.replace(" autodeflate='on'", "")), {**ALL_OK, "autodeflate": WARN}),
    ("free page reporting off", guest(GOOD_XML.replace(" freePageReporting='on'", "")),
     {**ALL_OK, "free-page-reporting": WARN}),
    ("excluded by the config", guest(with_devices(GOOD_XML, HOSTDEV), settings=DomainSettings(exclude=True)),
     {"managed": OK}),
    ("bad settings metadata", guest(settings=DomainSettings(invalid="minimal: not a number")), {"managed": FAIL}),
    ("Windows, left alone", guest(GOOD_XML.replace("<features>", "<features>\n    <hyperv mode='custom'/>")),
     {"managed": OK}),
    ("Windows, managed", guest(GOOD_XML.replace("<features>", "<features>\n    <hyperv mode='custom'/>"),
                               settings=DomainSettings(manage_windows=True)), ALL_OK),
    ("a read that contradicts itself", guest(uuid=None, problem="listed 2 times with different uuids or ids"),
     {"read": FAIL}),
    ("figures given twice", guest(stats=replace(GOOD, problem="current and actual both given in one report")),
     {"read": FAIL}),
    ("not in the read's list", guest(uuid=None), {"read": WARN}),
    ("dumpxml failed", guest(None, xml_error="dumpxml failed: error: internal error: oops"), {"domain-xml": FAIL}),
]


@pytest.mark.parametrize("g, expected", [case[1:] for case in GUEST_CASES], ids=[case[0] for case in GUEST_CASES])
def test_guest_checks(g, expected):
    assert levels(diagnose(reading(g)), g.stats.name) == expected


def test_every_finding_that_is_not_ok_says_what_to_change():
    findings = [f for _, g, _ in GUEST_CASES for f in diagnose(reading(g))]
    assert {f.level for f in findings} == {OK, WARN, FAIL}
    assert all(f.change for f in findings if f.level != OK)


def test_no_stats_period_gives_the_command_that_sets_it():
    g = guest(GOOD_XML.replace("      <stats period='1'/>\n", ""), name="web 1")
    found = the(diagnose(reading(g, connect="qemu+ssh://h2/system")), "web 1", "stats-period")
    assert found.change == "virsh -c qemu+ssh://h2/system dommemstat --domain 'web 1' --period 1 --live --config"


def test_a_period_inside_the_stale_limit_is_fresh():
    g = guest(stats=replace(GOOD, last_update=int(NOW) - 4))
    assert the(diagnose(reading(g, stale_after_s=5.0)), GOOD.name, "stats-period").level == OK


def test_passthrough_names_the_devices_address():
    found = the(diagnose(reading(guest(with_devices(GOOD_XML, HOSTDEV + VF)))), GOOD.name, "vfio")
    assert "0000:01:00.0, 0000:03:10.2" in found.seen and "exclude: true" in found.change


@pytest.mark.parametrize("name, shown", [
    ("web1", "web1"),
    ("web 1", "'web 1'"),
    ("1", UUID),  # virsh would take it for the id of another domain
    ("evil\x1b[2J\nFAIL  host: forged", UUID),  # no shell line holds it
])
def test_commands_name_the_domain_as_a_shell_line_reaches_it(name, shown):
    g = guest(GOOD_XML.replace(" autodeflate='on'", ""), name=name)
    assert the(diagnose(reading(g)), name, "autodeflate").change.startswith(f"virsh edit --domain {shown}, ")


# ------------------------------------------------------------------ the host checks

HOST_CASES = [
    ("everything fine", {}, {"virsh": OK, "swap": OK, "ksm": OK, "lock-dir": OK}),
    ("too little swap", {"host": host_facts(memory=HostMemory(16 * GIB, 8 * GIB, GIB, swap_free_kib=0))},
     {"swap": WARN}),
    ("swap not known (nodememstats)", {"host": host_facts(memory=HostMemory(16 * GIB, 8 * GIB, GIB))},
     {"swap": OK}),
    ("host memory off", {"host": host_facts(memory=None, memory_source="off")}, {"swap": OK}),
    ("host memory unreadable", {"host": host_facts(memory=None, memory_source="local")}, {"swap": WARN}),
    ("KSM running", {"host": host_facts(ksm_running=True, ksm_line="running: ...")}, {"ksm": WARN}),
    ("KSM running, ksm: refuse", {"host": host_facts(ksm_running=True, ksm_line="running: ..."),
                                  "ksm_refuse": True}, {"ksm": FAIL}),
    ("lock dir unusable", {"host": host_facts(lock_dir_problem="lock directory /x is writable by others")},
     {"lock-dir": FAIL}),
    ("virsh unreachable", {"virsh_error": "error: failed to connect to the hypervisor"}, {"virsh": FAIL}),
]


@pytest.mark.parametrize("changes, expected", [case[1:] for case in HOST_CASES], ids=[case[0] for case in HOST_CASES])
def test_host_checks(changes, expected):
    found = levels(diagnose(reading(**changes)), HOST)
    assert {check: found[check] for check in expected} == expected


@pytest.mark.parametrize("error, timed_out, advice", [
    ("virsh not found: '/nope' (install libvirt-clients or set --virsh)", False, "--virsh PATH"),
    ("error: failed to connect to the hypervisor; error: Failed to connect socket", False, "start libvirtd"),
    ("virsh domstats --balloon timed out after 10s", True, "--timeout S"),
    ("unparseable virsh output: line 2: unexpected key 'x'", False, "domstats --balloon --list-running"),
])
def test_an_unreachable_virsh_gets_the_advice_for_its_error(error, timed_out, advice):
    found = the(diagnose(reading(guest(), virsh_error=error, virsh_timed_out=timed_out)), HOST, "virsh")
    assert found.level == FAIL and advice in found.change


# ------------------------------------------------------------------ facts from the XML

@pytest.mark.parametrize("xml, passthrough, hugepages, locked", [
    (GOOD_XML, (), False, False),
    (with_devices(GOOD_XML, HOSTDEV), ("0000:01:00.0",), False, False),
    (with_devices(GOOD_XML, VF + USB), ("0000:03:10.2",), False, False),
    (with_devices(GOOD_XML, HOSTDEV.replace("bus='0x01'", "bus='zz'")), ("a PCI device (no readable address)",),
     False, False),
    (with_devices(GOOD_XML, "    <hostdev mode='subsystem' type='pci'/>\n"), ("a PCI device (no readable address)",),
     False, False),
    (with_backing(GOOD_XML, "hugepages", "locked"), (), True, True),
    (with_backing(GOOD_XML, "nosharepages"), (), False, False),
])
def test_domain_xml_facts_that_keep_a_balloon_from_freeing_memory(xml, passthrough, hugepages, locked):
    facts = parse_domain_xml(xml)
    assert (facts.passthrough, facts.hugepages, facts.locked) == (passthrough, hugepages, locked)


# ------------------------------------------------------------------ the lock directory

def test_a_lock_dir_not_there_yet_is_fine_where_the_daemon_can_create_it(tmp_path):
    config = cfg.build({"lock_dir": str(tmp_path / "lock")})
    assert doctor._lock_dir_state(config, "qemu:///system") == (str(tmp_path / "lock"), None)
    assert not (tmp_path / "lock").exists()  # read-only: not created


def test_a_lock_dir_others_can_write_is_refused(tmp_path):
    (tmp_path / "lock").mkdir()
    os.chmod(tmp_path / "lock", 0o777)
    _, problem = doctor._lock_dir_state(cfg.build({"lock_dir": str(tmp_path / "lock")}), "qemu:///system")
    assert "writable by others" in problem


def test_a_lock_dir_whose_parent_is_missing_is_refused(tmp_path):
    _, problem = doctor._lock_dir_state(cfg.build({"lock_dir": str(tmp_path / "no" / "lock")}), "qemu:///system")
    assert "does not exist" in problem


# ------------------------------------------------------------------ output and exit status

def test_text_shows_a_hostile_name_escaped_on_one_line():
    name = "evil\x1b[2J\nFAIL  host: forged\u202e"
    text = doctor.render_text(diagnose(reading(guest(stats=NO_DRIVER, name=name))))
    assert "\x1b" not in text and "\u202e" not in text
    assert "FAIL  evil\\x1b[2J\\nFAIL  host: forged\\u202e: balloon-driver: " in text
    assert not any(line.startswith("FAIL  host: forged") for line in text.splitlines())


def test_json_gives_a_hostile_name_back_exactly():
    name = "evil\x1b[2J\nname\u202e"
    text = doctor.render_json([("qemu:///system", diagnose(reading(guest(name=name))))])
    assert "\x1b" not in text and "\u202e" not in text
    (entry,) = json.loads(text)
    assert {f["subject"] for f in entry["findings"]} == {HOST, name}


@pytest.mark.parametrize("g, code", [(guest(), 0), (guest(GOOD_XML.replace(" autodeflate='on'", "")), 0),
                                     (guest(stats=NO_DRIVER), 1)], ids=["ok", "warn", "fail"])
def test_exit_status_is_1_only_when_something_fails(g, code, capsys):
    assert doctor.doctor(cfg.build({}), as_json=False, reader=lambda config, uri: reading(g)) == code
    assert capsys.readouterr().out.splitlines()[-1].startswith("balloon-2395 doctor: ")


# ------------------------------------------------------------------ the command, against the fake virsh

# What real virsh carries in a name: no newline (libvirt refuses one), a CR and bidi controls yes. An ESC
# the fake's XML cannot hold (XML 1.0 cannot): that guest's dumpxml does not parse.
EVIL = "evil\r\u202eFAIL  host: forged"
ESC = "esc\x1b[31mred"


def doctor_host(fake_host, tmp_path, *domains: dict) -> Tuple[object, list]:
    host = fake_host(*domains)
    # host memory and KSM are the test machine's: left out, the rest is the fake's
    host.config.write_text(f"host_memory: 'off'\nksm: ignore\nlock_dir: {json.dumps(str(tmp_path / 'lock'))}\n")
    return host, ["doctor", "--config", str(host.config)]


GUESTS = (domain("web1", autodeflate=True, free_page_reporting=True),
          domain("nodrv", driver=False), domain("nob", balloon="none"), domain("nostats", period=0),
          domain(EVIL, autodeflate=True, free_page_reporting=True))


def test_doctor_command_reports_each_guest(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, *GUESTS)
    result = run_cli(argv, host.env)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("OK    host: virsh: ") and line.endswith(" answers: 5 running domain(s)")
               for line in lines)
    assert any(line.startswith("FAIL  nodrv: balloon-driver: ") for line in lines)
    assert any(line.startswith("FAIL  nob: balloon-device: ") for line in lines)
    assert "      change: virsh dommemstat --domain nostats --period 1 --live --config" in lines
    assert any(line.startswith("OK    web1: balloon-driver: answering") for line in lines)


def test_doctor_command_escapes_a_hostile_name_and_addresses_it_by_uuid(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain(EVIL, period=0))
    result = run_cli(argv, host.env)
    assert "\r" not in result.stdout and "\u202e" not in result.stdout
    assert "WARN  evil\\r\\u202eFAIL  host: forged: stats-period: " in result.stdout
    assert f"      change: virsh dommemstat --domain {uuid_of(EVIL)} --period 1 --live --config" in \
        result.stdout.splitlines()


def test_doctor_command_reports_a_guest_whose_xml_does_not_parse(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain(ESC))
    result = run_cli(argv, host.env)
    assert result.returncode == 1 and "\x1b" not in result.stdout
    assert "FAIL  esc\\x1b[31mred: domain-xml: not checked: dumpxml is not XML: " in result.stdout
    assert f"      change: see it: virsh dumpxml --domain {uuid_of(ESC)}" in result.stdout.splitlines()


def test_doctor_command_changes_nothing(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, *GUESTS)
    before = host.read()
    run_cli(argv, host.env)
    assert host.read() == before
    assert {call[0] for call in host.calls()} == {READ_LINE, "dumpxml"}  # no setmem, no dommemstat --period
    assert not (tmp_path / "lock").exists()


def test_doctor_command_json(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, *GUESTS)
    result = run_cli([*argv, "--json"], host.env)
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)
    assert levels([Finding(**f) for f in entry["findings"]], EVIL)["balloon-driver"] == OK


def test_doctor_command_exits_0_when_nothing_fails(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain("web1"), domain("nostats", period=0))
    result = run_cli(argv, host.env)
    assert result.returncode == 0, result.stdout
    assert "WARN  nostats: stats-period: " in result.stdout


def test_doctor_command_with_libvirtd_down_fails_saying_so(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain("web1"))
    down = (VIRSH / "daemon-down.domstats-balloon-list-running.stderr").read_text()
    host.write({**host.read(), "faults": {"connect": {"exit": 1, "stderr": down}}})
    result = run_cli(argv, host.env)
    assert result.returncode == 1
    assert "FAIL  host: virsh: cannot read the running domains of " in result.stdout
    assert "      change: start libvirtd (systemctl start libvirtd), or name the hypervisor: -c URI" in result.stdout


def test_doctor_command_with_garbage_from_virsh_fails_saying_so(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain("web1"))
    host.write({**host.read(), "faults": {"domstats": {"stdout": "Domain: 'web1'\n  balloon.current=lots\n\n"}}})
    result = run_cli(argv, host.env)
    assert result.returncode == 1
    assert "unparseable virsh output" in result.stdout and "Traceback" not in result.stderr


def test_doctor_command_names_the_connection_in_its_commands(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain("nostats", period=0))
    result = run_cli([*argv, "-c", "qemu:///system"], host.env)
    assert "virsh -c qemu:///system dommemstat --domain nostats --period 1 --live --config" in result.stdout
    assert all(call[:2] == ["-c", "qemu:///system"] for call in host.calls())


@pytest.mark.parametrize("extra", [["--dry-run"], ["--minimal", "20"], ["--bogus"]])
def test_doctor_takes_no_flag_it_does_not_use(fake_host, tmp_path, extra):
    host, argv = doctor_host(fake_host, tmp_path, domain("web1"))
    assert run_cli([*argv, *extra], host.env).returncode == 2


def test_doctor_with_a_bad_config_exits_2(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain("web1"))
    host.config.write_text("minimal: lots\n")
    result = run_cli(argv, host.env)
    assert result.returncode == 2 and "minimal" in result.stderr
    assert host.calls() == []


def test_a_guest_at_its_maximum_is_told_how_to_raise_it(fake_host, tmp_path):
    host, argv = doctor_host(fake_host, tmp_path, domain("full", actual_mib=1024, maximum_mib=1024))
    result = run_cli(argv, host.env)
    assert "      change: raise it: virsh setmaxmem --domain full --size SIZE --config (at its next start)" in \
        result.stdout.splitlines()
