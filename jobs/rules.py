"""Validation rules, declared once as data: a name, a description, and the condition under
which a record FAILS the rule (a boolean Column over the parsed record; null = not failed).

A record failing any rule goes to quarantine with the names of every rule it failed. Rules
on a field apply only when the field could be read: a record that is not JSON fails
`json_object` alone, a missing field fails `required_fields` alone, a wrongly typed one
`field_types` alone. `docs`: `python -m jobs.rules` prints this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.contract import (
    CITY_NAMES,
    FIELD_NAMES,
    HUMIDITY_RANGE_PCT,
    MAX_FUTURE_SKEW_SECONDS,
    MAX_PAYLOAD_BYTES,
    SUPPORTED_SCHEMA_VERSIONS,
    TEMPERATURE_RANGE_C,
)
from jobs.schema import CORRUPT_RECORD, NUMERIC_FIELDS

if TYPE_CHECKING:
    from pyspark.sql import Column

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


@dataclass(frozen=True)
class Rule:
    """One expectation on a record."""

    name: str
    description: str
    fails: Callable[[], Column]


def _c(name: str) -> Column:
    from pyspark.sql import functions as F

    return F.col(name)


def _json_ok() -> Column:
    return _c("_utf8") & _c("_raw").isNotNull() & _c(f"_raw.{CORRUPT_RECORD}").isNull()


def _any(columns: list[Column]) -> Column:
    out = columns[0]
    for col in columns[1:]:
        out = out | col
    return out


def _payload_size() -> Column:
    return _c("_bytes") > MAX_PAYLOAD_BYTES


def _valid_utf8() -> Column:
    return _c("value").isNotNull() & ~_c("_utf8")


def _json_object() -> Column:
    return _c("value").isNull() | (_c("_utf8") & (_c("_raw").isNull() | _c(f"_raw.{CORRUPT_RECORD}").isNotNull()))


def _required_fields() -> Column:
    return _json_ok() & _any([_c(f"_raw.{name}").isNull() for name in FIELD_NAMES])


def _field_types() -> Column:
    return _json_ok() & _any([_c(f"_raw.{n}").isNotNull() & _c(f"_typed.{n}").isNull() for n in NUMERIC_FIELDS])


def _event_id_uuid() -> Column:
    return ~_c("_typed.event_id").rlike(UUID_PATTERN)


def _known_city() -> Column:
    return ~_c("_typed.city").isin(sorted(CITY_NAMES))


def _temperature_range() -> Column:
    low, high = TEMPERATURE_RANGE_C
    return ~_c("_typed.temperature_c").between(low, high)


def _humidity_range() -> Column:
    low, high = HUMIDITY_RANGE_PCT
    return ~_c("_typed.humidity_pct").between(low, high)


def _event_time_format() -> Column:
    return _c("_typed.event_time").isNotNull() & _c("_event_ts").isNull()


def _event_time_not_future() -> Column:
    from pyspark.sql import functions as F

    return _c("_event_ts") > _c("kafka_timestamp") + F.expr(f"interval {MAX_FUTURE_SKEW_SECONDS} seconds")


def _schema_version() -> Column:
    return ~_c("_typed.schema_version").isin(sorted(SUPPORTED_SCHEMA_VERSIONS))


RULES: tuple[Rule, ...] = (
    Rule("payload_size", f"the value is at most {MAX_PAYLOAD_BYTES} bytes", _payload_size),
    Rule("valid_utf8", "the value is valid UTF-8", _valid_utf8),
    Rule("json_object", "the value is a well-formed JSON object (not empty, not a tombstone)", _json_object),
    Rule("required_fields", f"every contract field is present and not null: {', '.join(FIELD_NAMES)}",
         _required_fields),
    Rule("field_types", f"numeric fields are JSON numbers of their type: {', '.join(NUMERIC_FIELDS)}",
         _field_types),
    Rule("event_id_uuid", "event_id is a UUID", _event_id_uuid),
    Rule("known_city", "city is one of the configured cities", _known_city),
    Rule("temperature_range", f"temperature_c within [{TEMPERATURE_RANGE_C[0]:g}, {TEMPERATURE_RANGE_C[1]:g}]",
         _temperature_range),
    Rule("humidity_range", f"humidity_pct within [{HUMIDITY_RANGE_PCT[0]:g}, {HUMIDITY_RANGE_PCT[1]:g}]",
         _humidity_range),
    Rule("event_time_format", "event_time is ISO-8601 with a UTC offset, e.g. 2026-11-26T19:03:39.123Z",
         _event_time_format),
    Rule("event_time_not_future",
         f"event_time is at most {MAX_FUTURE_SKEW_SECONDS} s after the record's Kafka timestamp",
         _event_time_not_future),
    Rule("schema_version_supported", f"schema_version is one of {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
         _schema_version),
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)


if __name__ == "__main__":
    for rule in RULES:
        print(f"{rule.name:26} {rule.description}")
