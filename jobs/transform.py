"""Pure transformations of the pipeline: DataFrame in, DataFrame out. No I/O here.

    kafka rows ──parse──▶ parsed ──validate──▶ checked ──┬─ valid ──classify──▶ curated rows
                                                        └─ invalid ──────────▶ quarantine rows
    kafka rows ──to_bronze──▶ bronze rows (every record as received)

What a micro-batch does with them is in jobs/micro_batch.py; the hourly aggregates' own
transformations are in jobs/hourly.py.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from common.env import Env
from jobs.rules import RULES
from jobs.schema import CORRUPT_RECORD, RAW_SCHEMA_DDL, TYPED_SCHEMA_DDL

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

T = TypeVar("T")

_COLUMNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def built_once(build: Callable[..., T]) -> Callable[..., T]:
    """Return `build` (Column expressions from hashable arguments) made once per SparkContext.

    Each PySpark call that builds an expression is a round trip to the JVM: the stream's plans
    took about 2,400 of them and 250 to 350 ms a micro-batch before any data moved (issue 14's
    profile). Column expressions are immutable and name their inputs, so one built for a
    batch serves every later one; a new SparkContext (a test's) builds its own."""

    @functools.wraps(build)
    def cached(*args):
        from pyspark import SparkContext

        context = SparkContext._active_spark_context
        if context is None:
            return build(*args)
        made = _COLUMNS.setdefault(context, {})
        key = (build.__qualname__, args)
        if key not in made:
            made[key] = build(*args)
        return made[key]

    return cached


# ISO-8601 with an offset (Z or ±hh:mm), with or without milliseconds.
EVENT_TIME_PATTERN = "yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX"
CURATED_COLUMNS = ("event_id", "sensor_id", "seq", "city", "temperature_c", "humidity_pct", "status",
                   "event_time", "kafka_topic", "kafka_partition", "kafka_offset")
STATUSES = ("CRITICAL", "WARNING", "OK")


@dataclass(frozen=True)
class Thresholds:
    """Status thresholds. CRITICAL when temperature >= critical_temp_high_c or <= critical_temp_low_c
    or humidity < critical_humidity_low_pct; else WARNING when temperature >= warning_temp_high_c
    or <= warning_temp_low_c or humidity < warning_humidity_low_pct or > warning_humidity_high_pct;
    else OK."""

    critical_temp_high_c: float = 40.0
    critical_temp_low_c: float = 0.0
    critical_humidity_low_pct: float = 15.0
    warning_temp_high_c: float = 35.0
    warning_temp_low_c: float = 5.0
    warning_humidity_low_pct: float = 30.0
    warning_humidity_high_pct: float = 90.0

    @classmethod
    def from_env(cls, env: Env) -> Thresholds:
        """Return thresholds from STATUS_* variables (defaults above)."""
        d = cls()
        return cls(
            critical_temp_high_c=env.get_float("STATUS_CRITICAL_TEMP_HIGH_C", d.critical_temp_high_c),
            critical_temp_low_c=env.get_float("STATUS_CRITICAL_TEMP_LOW_C", d.critical_temp_low_c),
            critical_humidity_low_pct=env.get_float("STATUS_CRITICAL_HUMIDITY_LOW_PCT",
                                                    d.critical_humidity_low_pct),
            warning_temp_high_c=env.get_float("STATUS_WARNING_TEMP_HIGH_C", d.warning_temp_high_c),
            warning_temp_low_c=env.get_float("STATUS_WARNING_TEMP_LOW_C", d.warning_temp_low_c),
            warning_humidity_low_pct=env.get_float("STATUS_WARNING_HUMIDITY_LOW_PCT", d.warning_humidity_low_pct),
            warning_humidity_high_pct=env.get_float("STATUS_WARNING_HUMIDITY_HIGH_PCT",
                                                    d.warning_humidity_high_pct),
        )

    def __post_init__(self) -> None:
        if not (self.critical_temp_low_c <= self.warning_temp_low_c < self.warning_temp_high_c
                <= self.critical_temp_high_c):
            raise ValueError("status thresholds must satisfy critical_low <= warning_low < warning_high "
                             f"<= critical_high, got {self}")
        if not self.critical_humidity_low_pct <= self.warning_humidity_low_pct < self.warning_humidity_high_pct:
            raise ValueError(f"humidity thresholds must satisfy critical_low <= warning_low < warning_high, got {self}")


def parse(kafka_rows: DataFrame) -> DataFrame:
    """Return Kafka rows with the value read three ways: raw text per field, typed per the
    contract, and event_time as a timestamp (helper columns start with `_`)."""
    return kafka_rows.select(*_parsed_columns()).select("*", _event_ts_column())


@built_once
def _parsed_columns() -> tuple[Column, ...]:
    from pyspark.sql import functions as F

    text = F.col("value").cast("string")
    utf8 = F.is_valid_utf8(text)
    return (
        F.col("key"), F.col("value"), F.col("topic"), F.col("partition"), F.col("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        utf8.alias("_utf8"),
        F.octet_length("value").alias("_bytes"),
        # Not valid UTF-8: not parsed at all (json_object does not apply, valid_utf8 fails).
        F.when(utf8, F.from_json(text, RAW_SCHEMA_DDL, {"columnNameOfCorruptRecord": CORRUPT_RECORD}))
        .alias("_raw"),
        F.when(utf8, F.from_json(text, TYPED_SCHEMA_DDL)).alias("_typed"),
    )


@built_once
def _event_ts_column() -> Column:
    from pyspark.sql import functions as F

    return F.try_to_timestamp(F.col("_typed.event_time"), F.lit(EVENT_TIME_PATTERN)).alias("_event_ts")


def validate(parsed: DataFrame) -> DataFrame:
    """Return parsed rows with `failed_rules`: the names of every rule the record fails."""
    return parsed.select("*", _failed_rules_column())


@built_once
def _failed_rules_column() -> Column:
    from pyspark.sql import functions as F

    # Not array_compact(array(when(fails, name), ...)): array_compact is a higher-order function
    # (filter), which Spark cannot compile, so every rule under it was evaluated interpreted, a
    # row at a time, each field read looking up the session's SQLConf: a fifth of the reprocess
    # job's CPU in its profile. A concat of one- or zero-element arrays compiles, in rule order.
    none = F.array().cast("array<string>")
    return F.concat(*[F.when(rule.fails(), F.array(F.lit(rule.name))).otherwise(none) for rule in RULES]
                    ).alias("failed_rules")


def status_column(thresholds: Thresholds, temperature: Column, humidity: Column) -> Column:
    """Return the status (CRITICAL, WARNING or OK) of a reading; the one place it is derived."""
    from pyspark.sql import functions as F

    t = thresholds
    critical = (temperature >= t.critical_temp_high_c) | (temperature <= t.critical_temp_low_c) | (
        humidity < t.critical_humidity_low_pct)
    warning = ((temperature >= t.warning_temp_high_c) | (temperature <= t.warning_temp_low_c)
               | (humidity < t.warning_humidity_low_pct) | (humidity > t.warning_humidity_high_pct))
    return F.when(critical, "CRITICAL").when(warning, "WARNING").otherwise("OK")


def curated(checked: DataFrame, thresholds: Thresholds) -> DataFrame:
    """Return the valid records as curated rows, classified."""
    from pyspark.sql import functions as F

    valid = checked.where(F.size("failed_rules") == 0)
    return valid.select(*curated_columns(thresholds))


def curated_columns(thresholds: Thresholds) -> list[Column]:
    """Return the curated row's columns over checked records, in CURATED_COLUMNS order."""
    from pyspark.sql import functions as F

    return [
        F.col("_typed.event_id").alias("event_id"),
        F.col("_typed.sensor_id").alias("sensor_id"),
        F.col("_typed.seq").alias("seq"),
        F.col("_typed.city").alias("city"),
        F.col("_typed.temperature_c").alias("temperature_c"),
        F.col("_typed.humidity_pct").alias("humidity_pct"),
        status_column(thresholds, F.col("_typed.temperature_c"), F.col("_typed.humidity_pct")).alias("status"),
        F.col("_event_ts").alias("event_time"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
    ]


def first_copy_rank(event_id: str, kafka_timestamp: str, partition: str, offset: str) -> Column:
    """Return a Column: 1 for the copy of an event that counts, 2, 3... for the others. Among
    records that share an event_id, the first by Kafka timestamp, then partition, then offset
    counts: the copy the stream keeps (it keeps the first it reads; copies of an event share its
    key, so they are in one partition, where the first read is the lowest offset). The hourly
    aggregates and the reprocess job both keep this one."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    return F.row_number().over(Window.partitionBy(event_id).orderBy(kafka_timestamp, partition, offset))


def now_column() -> Column:
    """Return the time a row is written, read from the clock when it is (milliseconds).

    Not current_timestamp(): Spark replaces that with the query's start time as a literal,
    which whole-stage code generation writes into the generated Java source. So every
    micro-batch's plan was new code: 4 Janino compilations a batch and 4 new classes for the
    JIT, about a fifth of the stream's CPU (issue 14's profile). This expression's code is the
    same in every batch."""
    from pyspark.sql import functions as F

    return F.timestamp_millis(F.reflect(F.lit("java.lang.System"), F.lit("currentTimeMillis")).cast("long"))


def quarantine(checked: DataFrame) -> DataFrame:
    """Return the invalid records: raw value, Kafka coordinates and every failed rule."""
    invalid, columns = _quarantine_columns()
    return checked.where(invalid).select(*columns)


@built_once
def _quarantine_columns() -> tuple[Column, tuple[Column, ...]]:
    from pyspark.sql import functions as F

    return F.size("failed_rules") > 0, (
        F.col("key"), F.col("value"),
        # readable copy of the value when it is UTF-8
        F.when(F.col("_utf8"), F.col("value").cast("string")).alias("value_text"),
        F.col("topic"), F.col("partition"), F.col("offset"), F.col("kafka_timestamp"), F.col("failed_rules"),
        now_column().alias("quarantined_at"),
        F.to_date("kafka_timestamp").alias("kafka_date"),
    )


def to_bronze(kafka_rows: DataFrame) -> DataFrame:
    """Return every Kafka record as received, with its coordinates and the ingest time."""
    return kafka_rows.select(*_bronze_columns())


@built_once
def _bronze_columns() -> tuple[Column, ...]:
    from pyspark.sql import functions as F

    return (
        F.col("key"), F.col("value"), F.col("topic"), F.col("partition"), F.col("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        now_column().alias("ingest_time"),
        F.to_date("timestamp").alias("kafka_date"),
    )
