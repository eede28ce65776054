"""The public surface, lint, and types, checked with every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import chronoscore

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    assert sorted(chronoscore.__all__) == [
        "AlreadyExists",
        "ChronoscoreError",
        "Client",
        "Entry",
        "FailedPrecondition",
        "Friends",
        "InvalidArgument",
        "Leaderboard",
        "NotFound",
        "OutOfRange",
        "Page",
        "Period",
        "PermissionDenied",
        "RankedEntry",
        "Result",
        "Unauthenticated",
        "Unavailable",
        "Update",
    ]
    for name in chronoscore.__all__:
        assert getattr(chronoscore, name).__module__.startswith("chronoscore.")


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
