"""The event contract, version 1: the one source of truth for the producer, the Spark schema,
the validation rules and the tests.

A reading is a JSON object, UTF-8, published with key = sensor_id:

    {"event_id": "0b0f...", "sensor_id": "f42-s0007", "seq": 17, "city": "Recife",
     "temperature_c": 27.41, "humidity_pct": 78.2,
     "event_time": "2026-11-26T19:03:39.123Z", "schema_version": 1}

Status (OK / WARNING / CRITICAL) is not part of the event: it is derived downstream, in one
place (jobs/transform.py), from configurable thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


@dataclass(frozen=True)
class Field:
    """One field of the event: its JSON type, its Spark SQL type and what it means."""

    name: str
    json_type: str  # "string", "integer" or "number"
    spark_type: str  # Spark SQL DDL type
    description: str


EVENT_FIELDS: tuple[Field, ...] = (
    Field("event_id", "string", "string", "UUID, unique per reading; the idempotency key end to end"),
    Field("sensor_id", "string", "string", "stable id of one device"),
    Field("seq", "integer", "bigint", "per-sensor counter, +1 per reading: gaps show loss"),
    Field("city", "string", "string", "one of CITIES"),
    Field("temperature_c", "number", "double", "degrees Celsius"),
    Field("humidity_pct", "number", "double", "relative humidity, 0-100"),
    Field("event_time", "string", "string", "ISO-8601 UTC with offset, e.g. 2026-11-26T19:03:39.123Z"),
    Field("schema_version", "integer", "int", "contract version; 1"),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in EVENT_FIELDS)
REQUIRED_FIELDS: frozenset[str] = frozenset(FIELD_NAMES)

# Validation limits (the rules themselves are declared in jobs/rules.py).
TEMPERATURE_RANGE_C = (-50.0, 70.0)
HUMIDITY_RANGE_PCT = (0.0, 100.0)
MAX_FUTURE_SKEW_SECONDS = 300
MAX_PAYLOAD_BYTES = 2048


@dataclass(frozen=True)
class City:
    """A configured city and its climate baseline (used by the simulator)."""

    name: str
    timezone: str
    lat: float
    lon: float
    mean_temp_c: float
    daily_amplitude_c: float
    mean_humidity_pct: float
    daily_humidity_amplitude_pct: float


# The demo's eight cities, with rough annual-mean climate baselines.
CITIES: tuple[City, ...] = (
    City("São Paulo", "America/Sao_Paulo", -23.55, -46.63, 20.5, 5.0, 75.0, 12.0),
    City("Rio de Janeiro", "America/Sao_Paulo", -22.91, -43.17, 25.0, 4.0, 77.0, 8.0),
    City("Curitiba", "America/Sao_Paulo", -25.43, -49.27, 17.5, 6.0, 80.0, 12.0),
    City("Belo Horizonte", "America/Sao_Paulo", -19.92, -43.94, 22.0, 5.5, 68.0, 14.0),
    City("Salvador", "America/Bahia", -12.97, -38.50, 26.0, 3.0, 80.0, 7.0),
    City("Recife", "America/Recife", -8.05, -34.88, 26.5, 3.0, 79.0, 7.0),
    City("Porto Alegre", "America/Sao_Paulo", -30.03, -51.23, 19.5, 6.5, 76.0, 12.0),
    City("Brasília", "America/Sao_Paulo", -15.79, -47.88, 21.5, 6.5, 60.0, 18.0),
)
CITY_NAMES: frozenset[str] = frozenset(c.name for c in CITIES)
CITY_BY_NAME: dict[str, City] = {c.name: c for c in CITIES}
