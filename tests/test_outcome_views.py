"""`status` and `explain` show what became of the running daemon's latest change of each domain
(issue 13, point 8): facts, not intentions."""

from __future__ import annotations

import json
import re

import pytest

from conftest import domain, wait_for

CHANGE = r"grow \d+->\d+ {} \d\d:\d\d:\d\d"


def _running_daemon(fake_host, daemons, setmem_fails):
    host = fake_host(domain("short", usable_mib=300), domain("fine", usable_mib=600))
    if setmem_fails:
        host.write({**host.read(), "faults": {"setmem": {"exit": 1, "stderr": "error: internal error: oops\n"}}})
    proc = daemons(host, "--secs", "0.2", "--policy", "step")
    assert wait_for(lambda: any("setmem" in call for call in host.calls()))
    assert wait_for(lambda: list(host.lock_dir.glob("*.state.json")))
    return host, proc


@pytest.mark.parametrize("setmem_fails,outcome", [(False, "applied"), (True, "failed|fenced")])
def test_status_shows_the_latest_change_and_what_became_of_it(fake_host, daemons, setmem_fails, outcome):
    host, proc = _running_daemon(fake_host, daemons, setmem_fails)
    table = host.run("status")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert "LAST" in header.split()
    last = {row.split()[0]: row for row in rows}
    assert re.search(CHANGE.format(f"({outcome})"), last["short"])
    assert " - " in last["fine"]  # never changed
    rows = {r["domain"]: r for r in json.loads(host.run("status", "--json").stdout)}
    assert re.fullmatch(CHANGE.format(f"({outcome})"), rows["short"]["last"])
    proc.terminate()
    assert proc.wait(timeout=20) == 0


def test_explain_shows_the_latest_change_and_what_became_of_it(fake_host, daemons):
    host, proc = _running_daemon(fake_host, daemons, setmem_fails=False)
    explained = host.run("explain", "short")
    assert explained.returncode == 0, explained.stderr
    assert re.search("last change: " + CHANGE.format("applied"), explained.stdout)
    proc.terminate()
    assert proc.wait(timeout=20) == 0
