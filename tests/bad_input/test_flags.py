"""Flags and environment variables: durations, their defaults as the README shows them, and
refusals that read cleanly."""

from __future__ import annotations

import re

import pytest

from kubefabric.config import DURATIONS, OPTIONS, Option
from tests._servers import REPO_ROOT
from tests.operations._processes import run_kubefabric

DURATION_OPTIONS = [option for option in OPTIONS if option.field in DURATIONS]


@pytest.mark.parametrize("option", DURATION_OPTIONS, ids=lambda option: option.flag)
@pytest.mark.parametrize("value", ["-1", "-0.5", "-1s"])
def test_a_negative_duration_is_refused_naming_the_flag(option: Option, value: str) -> None:
    result = run_kubefabric(f"{option.flag}={value}")

    assert result.returncode == 2, result.stderr
    assert f"{option.flag} / {option.env}: " in result.stderr, result.stderr
    assert repr(value) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_refusals_read_without_pydantics_prefix() -> None:
    result = run_kubefabric("--listen-address", "nohostport", "--compaction-interval", "-1")

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "kubefabric: --listen-address / KUBEFABRIC_LISTEN_ADDRESS: 'nohostport' is not HOST:PORT",
        "kubefabric: --compaction-interval / KUBEFABRIC_COMPACTION_INTERVAL: '-1' is negative: a duration is 0 or more",
    ]


def test_help_shows_duration_defaults_as_the_readme_does() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    help_text = " ".join(run_kubefabric("--help").stdout.split())
    for option in DURATION_OPTIONS:
        row = re.search(rf"^\| `{option.flag}` \| `{option.env}` \| `([^`]+)` \|", readme, re.MULTILINE)
        assert row, f"{option.flag} is missing from the README's configuration table"
        shown = re.search(rf"{option.flag} {option.field.upper()} .*?\(default: ([^)]+)\)", help_text)
        assert shown, help_text
        assert shown[1] == row[1], (option.flag, shown[1], row[1])
