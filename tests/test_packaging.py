"""The package (issue 17, points 1 and 2): one version everywhere, and the wheel `pip wheel .` builds, installed
into a fresh venv, runs with no checkout around: --version, --simulate, check-config and status; it brings the
manual page and the shell completions (issue 25, point 4).

The wheel tests cost about a minute (one build and one install per session): they run when
BALLOON_PACKAGING=1, as .ci/run sets, and are skipped otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import List, NamedTuple

import pytest

from balloon2395 import __version__, resources
from conftest import ROOT, domain

WHEEL = pytest.mark.skipif(os.environ.get("BALLOON_PACKAGING") != "1",
                           reason="builds and installs the wheel: set BALLOON_PACKAGING=1 (.ci/run does)")


class Installed(NamedTuple):
    wheel: Path
    venv: Path
    away: Path  # a directory outside the checkout, the commands' working directory

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "balloon-2395"

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LIBVIRT_DEFAULT_URI")}
        return dict(env, **extra)

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.command), *args], cwd=self.away, env=self.env(**extra), capture_output=True,
                              text=True, timeout=120)


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files, as a clean clone has them: the build leaves build/ and an egg-info
    where it runs, which the checkout must not gain."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True, timeout=600)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    tree = _tracked_copy(base / "tree")
    _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(base / "dist"), str(tree))
    (wheel,) = (base / "dist").glob("balloon_2395-*.whl")
    venv.create(base / "venv", with_pip=True)
    _pip(base / "venv" / "bin" / "python", "install", str(wheel))
    away = base / "away"
    away.mkdir()
    return Installed(wheel, base / "venv", away)


def _wheel_names(wheel: Path) -> List[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


# ---------------------------------------------------------------- one version

def test_the_debian_changelog_is_at_the_package_version():
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(r"^balloon-2395 \((.+)\) ", first).group(1) == __version__, first


def test_the_example_config_and_scenarios_are_the_checkouts_in_a_checkout():
    assert resources.examples_dir() == ROOT / "examples"
    assert resources.example_config().is_file() and (resources.scenario_dir() / "demo.yaml").is_file()


# ---------------------------------------------------------------- the wheel

@WHEEL
def test_the_wheel_holds_every_module_of_the_product_and_its_examples(installed):
    names = set(_wheel_names(installed.wheel))
    modules = {p.relative_to(ROOT / "lib").as_posix() for p in (ROOT / "lib" / "balloon2395").rglob("*.py")}
    examples = {"balloon2395/examples/config.yaml",
                *(f"balloon2395/examples/scenarios/{p.name}" for p in (ROOT / "examples" / "scenarios").glob("*.yaml"))}
    assert modules and not (modules | examples) - names, sorted((modules | examples) - names)


# the manual page and the completions, as data files under the install's prefix (pyproject.toml)
DATA_FILES = {"share/man/man8/balloon-2395.8": "docs/balloon-2395.8",
              "share/bash-completion/completions/balloon-2395": "examples/completion/bash/balloon-2395",
              "share/zsh/site-functions/_balloon-2395": "examples/completion/zsh/_balloon-2395"}


@WHEEL
def test_the_wheel_holds_the_manual_page_and_the_completions(installed):
    data = f"balloon_2395-{__version__}.data/data/"
    assert sorted(n[len(data):] for n in _wheel_names(installed.wheel) if n.startswith(data)) == sorted(DATA_FILES)


@WHEEL
def test_the_installed_manual_page_and_completions_are_the_checkouts(installed):
    assert {where: (installed.venv / where).read_text() for where in DATA_FILES} == {
        where: (ROOT / source).read_text() for where, source in DATA_FILES.items()}


@WHEEL
def test_the_wheel_leaves_the_test_kit_and_the_checkouts_files_out(installed):
    stray = [n for n in _wheel_names(installed.wheel) if not n.startswith(("balloon2395/", "balloon_2395-"))]
    assert stray == []


@WHEEL
def test_version_prints_the_package_version(installed):
    result = installed.run("--version")
    assert (result.returncode, result.stdout) == (0, f"balloon-2395 {__version__}\n"), result.stderr
    assert installed.wheel.name.startswith(f"balloon_2395-{__version__}-")


@WHEEL
def test_simulate_runs_the_default_scenario_with_no_checkout(installed):
    result = installed.run("--simulate", "--duration", "5")
    assert result.returncode == 0, result.stderr
    assert "simulated 5s of 'demo'" in result.stdout


@WHEEL
def test_simulate_names_the_installed_scenarios_for_an_unknown_one(installed):
    result = installed.run("--simulate", "no-such-scenario")
    assert result.returncode == 2
    known = re.search(r"known: ([^;]*);", result.stderr).group(1).split(", ")
    assert sorted(known) == sorted(p.stem for p in (ROOT / "examples" / "scenarios").glob("*.yaml"))


@WHEEL
def test_check_config_accepts_the_installed_example_config(installed):
    example = installed.venv.joinpath("lib").glob("python3*/site-packages/balloon2395/examples/config.yaml")
    (path,) = example
    assert path.read_text() == (ROOT / "examples" / "config.yaml").read_text()
    result = installed.run("check-config", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: ok\n"), result.stderr


@WHEEL
def test_check_config_names_the_key_of_a_bad_file(installed):
    bad = installed.away / "bad.yaml"
    bad.write_text("minimal: 50\nmaximal: 40\n")
    result = installed.run("check-config", str(bad))
    assert result.returncode == 2 and str(bad) in result.stderr and "maximal" in result.stderr, result.stderr


@WHEEL
def test_status_reads_a_fake_virsh_with_the_installed_package_alone(installed, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"domains": [domain("web1", usable_mib=370), domain("ok", usable_mib=600)]}))
    virsh = tmp_path / "virsh"  # the fake virsh the wheel ships, run by the venv's Python: no checkout involved
    virsh.write_text(f"#!/bin/sh\nexec {installed.venv}/bin/python -m balloon2395.sim.fake_virsh \"$@\"\n")
    virsh.chmod(0o755)
    result = installed.run("status", "--json", "--virsh", str(virsh), "--lock-dir", str(tmp_path / "lock"),
                           FAKE_VIRSH_STATE=str(state))
    assert result.returncode == 0, result.stderr
    assert [(r["domain"], r["next"]) for r in json.loads(result.stdout)] == [("web1", "grow"), ("ok", "hold")]
