"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    """Keep the tests' temporary folders in the stack's scratch folder (stackctl sets
    SPARK_SCRATCH_DIR, jobs/scratch.py), not in /tmp: the next run clears them."""
    scratch = os.environ.get("SPARK_SCRATCH_DIR")
    if scratch and not config.option.basetemp:
        config.option.basetemp = str(Path(scratch) / "pytest")


@pytest.fixture
def unique_name():
    """Return a factory of names no other test (and not the running pipeline) uses."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}"

    return make
