"""Serialization of events: compact UTF-8 JSON, one small function."""

from __future__ import annotations

import json

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def serialize(event: dict | str) -> bytes:
    """Return the event as compact UTF-8 JSON bytes (non-ASCII kept as UTF-8, no NaN)."""
    return _ENCODER.encode(event).encode("utf-8")
