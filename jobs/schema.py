"""Spark schemas derived from the event contract (common/contract.py), never written by hand."""

from __future__ import annotations

from common.contract import EVENT_FIELDS

CORRUPT_RECORD = "_corrupt_record"
NUMERIC_FIELDS: tuple[str, ...] = tuple(f.name for f in EVENT_FIELDS if f.json_type in {"integer", "number"})

# Every field as text, plus the corrupt-record column: tells present from missing, and
# catches malformed JSON (since Spark 3, from_json returns a row of nulls for it, not null).
RAW_SCHEMA_DDL = ", ".join([*(f"{f.name} string" for f in EVENT_FIELDS), f"{CORRUPT_RECORD} string"])
# The contract's types: a field whose JSON type is wrong parses to null (partial results).
TYPED_SCHEMA_DDL = ", ".join(f"{f.name} {f.spark_type}" for f in EVENT_FIELDS)

