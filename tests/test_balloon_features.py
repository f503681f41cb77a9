"""The balloon's own features (issue 15, point 2): autodeflate and free page reporting, read from the
domain XML once per domain lifetime, shown by `status` and `explain`, and the note that tells how to
turn autodeflate on."""

from __future__ import annotations

import json
import shlex

import pytest

from balloon2395.logs.lines import autodeflate_note
from balloon2395.virsh.domain_xml import parse_domain_xml
from conftest import FIXTURES, domain, uuid_of


def xml_with(*balloons: str) -> str:
    return f"<domain type='kvm'><name>web</name><devices>{''.join(balloons)}</devices></domain>"


def features(*balloons: str):
    facts = parse_domain_xml(xml_with(*balloons))
    return facts.autodeflate, facts.free_page_reporting


def test_both_features_on():
    assert features("<memballoon model='virtio' autodeflate='on' freePageReporting='on'/>") == (True, True)


def test_each_feature_on_its_own():
    assert features("<memballoon model='virtio' autodeflate='on'/>") == (True, False)
    assert features("<memballoon model='virtio' freePageReporting='on'/>") == (False, True)


@pytest.mark.parametrize("balloon", [
    "<memballoon model='virtio'/>",
    "<memballoon model='virtio' autodeflate='off' freePageReporting='off'/>",  # libvirt writes an explicit off
    "<memballoon model='none'/>",
    "",  # no balloon device at all
], ids=["absent", "off", "model-none", "no-device"])
def test_features_off_unless_said_on(balloon):
    assert features(balloon) == (False, False)


@pytest.mark.parametrize("value", ["yes", "ON", "on ", "1", "true", ""])
def test_a_feature_is_on_only_for_exactly_on(value):
    assert features(f"<memballoon model='virtio' autodeflate='{value}' freePageReporting='{value}'/>") == \
        (False, False)


def test_only_the_first_balloon_counts():
    on, off = ("<memballoon model='virtio' autodeflate='on' freePageReporting='on'/>",
               "<memballoon model='virtio'/>")
    assert features(off, on) == (False, False)
    assert features(on, off) == (True, True)


def test_a_real_dumpxml_with_both_features_on():
    facts = parse_domain_xml((FIXTURES / "virsh" / "dumpxml-autodeflate-fpr.xml").read_text(encoding="utf-8"))
    assert (facts.balloon_model, facts.autodeflate, facts.free_page_reporting, facts.stats_period_s) == \
        ("virtio", True, True, 1)


@pytest.mark.parametrize("name", ["new\nline", "tab\tbed", "bell\x07", "cr\rx", "sep\u2028x"])
def test_a_name_no_quoting_keeps_on_one_line_is_shown_escaped_and_the_command_names_its_uuid(name):
    note = autodeflate_note(name, uuid_of(name), None)
    assert note.isprintable() and note.startswith(f"note {name!r}: no autodeflate: ")
    assert shlex.split(note.rsplit(" with: ", 1)[1])[-2:] == ["--", uuid_of(name)]


def test_a_printable_name_is_given_as_it_is():
    note = autodeflate_note("web 1", uuid_of("web 1"), None)
    assert note.startswith("note web 1: no autodeflate: ") and note.endswith(" -- 'web 1'")


FEATURED = [domain("both", usable_mib=600, autodeflate=True, free_page_reporting=True),
            domain("deflates", usable_mib=600, autodeflate=True),
            domain("reports", usable_mib=600, free_page_reporting=True),
            domain("plain", usable_mib=600),
            domain("noballoon", usable_mib=600, balloon="none")]


def test_status_shows_the_balloon_and_its_features(fake_host):
    table = fake_host(*FEATURED).cli("status")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    at = header.split().index("BALLOON")
    assert {row.split()[0]: row.split()[at] for row in rows} == {
        "both": "virtio,autodeflate,fpr", "deflates": "virtio,autodeflate", "reports": "virtio,fpr",
        "plain": "virtio", "noballoon": "none"}


def test_status_json_gives_the_balloon_and_its_features(fake_host):
    rows = json.loads(fake_host(*FEATURED).cli("status", "--json").stdout)
    assert {r["domain"]: (r["balloon"], r["autodeflate"], r["free_page_reporting"]) for r in rows} == {
        "both": ("virtio", True, True), "deflates": ("virtio", True, False), "reports": ("virtio", False, True),
        "plain": ("virtio", False, False), "noballoon": ("none", False, False)}


@pytest.mark.parametrize("name,line", [
    ("both", "balloon: virtio, autodeflate on, free page reporting on"),
    ("reports", "balloon: virtio, autodeflate off, free page reporting on"),
    ("plain", "balloon: virtio, autodeflate off, free page reporting off"),
])
def test_explain_says_the_balloon_and_its_features(fake_host, name, line):
    explained = fake_host(*FEATURED).cli("explain", name)
    assert explained.returncode == 0, explained.stderr
    assert f"\n  {line}\n" in explained.stdout


def test_the_views_say_when_the_domain_xml_could_not_be_read(fake_host):
    host = fake_host(domain("web", usable_mib=600, autodeflate=True))
    host.write({**host.read(), "faults": {"dumpxml": {"exit": 1, "stderr": "error: internal error: oops\n"}}})
    rows = json.loads(host.cli("status", "--json").stdout)
    assert (rows[0]["balloon"], rows[0]["autodeflate"], rows[0]["free_page_reporting"]) == (None, None, None)
    header, row = host.cli("status").stdout.splitlines()
    assert row.split()[header.split().index("BALLOON")] == "-"
    assert "\n  balloon: not known (its domain XML could not be read)\n" in host.cli("explain", "web").stdout
