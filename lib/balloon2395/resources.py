"""Where the example config and the simulator's scenarios are: examples/ beside lib/ in a checkout, or
the copy a wheel or the .deb installs inside the package (pyproject.toml maps examples/ to
balloon2395.examples)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def examples_dir() -> Path:
    installed = _PACKAGE / "examples"
    return installed if installed.is_dir() else _PACKAGE.parents[1] / "examples"


def scenario_dir() -> Path:
    return examples_dir() / "scenarios"


def example_config() -> Path:
    return examples_dir() / "config.yaml"
