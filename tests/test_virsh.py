"""The virsh runner: argv lists, LC_ALL=C, the connection, a timeout on every call, errors."""

from __future__ import annotations

import json
import time

import pytest
import sh

from balloon2395.virsh.commands import Virsh, VirshError, VirshTimeout, default_uri


@pytest.fixture
def script(tmp_path):
    def make(body: str) -> str:
        path = tmp_path / "virsh"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)
    return make


def test_argv_environment_and_connection(script, tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "pt_BR.UTF-8")
    monkeypatch.setenv("LANGUAGE", "pt_BR")
    out = tmp_path / "seen.json"
    seen_by_virsh = ('{"argv": sys.argv[1:], "lc_all": os.environ.get("LC_ALL"), '
                     '"language": os.environ.get("LANGUAGE")}')
    binary = script(f"""python3 -c 'import json, os, sys; json.dump({seen_by_virsh}, open("{out}", "w"))' "$@"\n""")
    Virsh(binary, "qemu:///system").setmem("-weird name", 1048576)
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["-c", "qemu:///system", "setmem", "--domain", "-weird name", "--size", "1048576", "--live"]
    assert seen["lc_all"] == "C" and seen["language"] is None


def test_errors_carry_virshs_message(script):
    binary = script("echo 'error: failed to get domain '\"'\"'nosuch'\"'\"'' >&2\nexit 1\n")
    with pytest.raises(VirshError) as err:
        Virsh(binary).dommemstat("nosuch")
    assert err.value.exit_code == 1
    assert err.value.message == "error: failed to get domain 'nosuch'"
    assert err.value.domain_gone and not err.value.unsupported


def test_timeout_kills_the_call(script):
    binary = script("sleep 30\n")
    started = time.monotonic()
    with pytest.raises(VirshTimeout):
        Virsh(binary, timeout=0.5).domstats_balloon()
    assert time.monotonic() - started < 10


def test_calls_are_counted(script):
    virsh = Virsh(script("printf 'web1\\n\\n'\n"))
    assert virsh.run("list", "--name") == "web1\n\n"
    assert virsh.calls == 1


def test_default_uri_follows_libvirt():
    assert default_uri({}, euid=0) == "qemu:///system"
    assert default_uri({}, euid=1000) == "qemu:///session"
    assert default_uri({"LIBVIRT_DEFAULT_URI": "qemu+ssh://h/system"}, euid=0) == "qemu+ssh://h/system"


def test_a_virsh_killed_while_starting_is_a_virsh_error_not_a_crash(monkeypatch):
    # sh unpacks the child's exec report; a child killed while starting leaves it cut short
    def cut_short(*args, **kwargs):
        raise ValueError("not enough values to unpack (expected 2, got 1)")

    monkeypatch.setattr(sh.Command, "__call__", cut_short)
    with pytest.raises(VirshError, match="ended while starting"):
        Virsh("virsh").run("version")
