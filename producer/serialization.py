"""Serialization of events: compact UTF-8 JSON, one small function."""

from __future__ import annotations

import json

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def serialize(event: dict | str) -> bytes:
    """Return the event as compact UTF-8 JSON bytes (non-ASCII kept as UTF-8, no NaN)."""
    return _ENCODER.encode(event).encode("utf-8")


_READING = ('{{"event_id":"{event_id}","sensor_id":"{sensor_id}","seq":{seq},"city":"{city}",'
            '"temperature_c":{temperature_c!r},"humidity_pct":{humidity_pct!r},'
            '"event_time":"{event_time}","schema_version":{schema_version}}}')


def serialize_reading(event: dict) -> bytes:
    """Return a valid reading's bytes, identical to serialize(event) but about 3x faster.

    Safe only for readings the fleet builds: ids of [A-Za-z0-9_-] and uuid hex, cities
    from the contract (no quote or backslash), finite floats (repr is what json writes).
    tests/unit/test_producer_simulation.py proves the bytes equal serialize()'s.
    """
    return _READING.format_map(event).encode("utf-8")
