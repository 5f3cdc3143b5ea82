"""Fixtures shared by every tier."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def unique_name():
    """Return a factory of names no other test (and not the running pipeline) uses."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}"

    return make
