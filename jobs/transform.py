"""Pure transformations of the pipeline: DataFrame in, DataFrame out. No I/O here.

    kafka rows ──parse──▶ parsed ──validate──▶ checked ──┬─ valid ──classify──▶ curated rows
                                                        └─ invalid ──────────▶ quarantine rows
    kafka rows ──to_bronze──▶ bronze rows (every record as received)

"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from common.env import Env
from jobs.rules import RULE_NAMES, RULES
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

    failed = F.array(*[F.when(rule.fails(), F.lit(rule.name)) for rule in RULES])
    return F.array_compact(failed).alias("failed_rules")


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


@dataclass(frozen=True)
class BatchStats:
    """Counts of one batch of checked records, from a single aggregation."""

    rows: int
    quarantined: int
    rule_failures: dict[str, int]
    next_offsets: dict[int, int]  # Kafka partition -> offset after the last record seen


def summarize(rows) -> tuple[BatchStats, list]:
    """Return the stats of collected (partition, offset, failed_rules, ...) rows, and the rows
    that failed no rule. Done on the driver: a micro-batch is bounded by maxOffsetsPerTrigger,
    and one collect beats an aggregation's shuffle by a second per batch on small batches."""
    failures = dict.fromkeys(RULE_NAMES, 0)
    next_offsets: dict[int, int] = {}
    valid = []
    quarantined = 0
    for row in rows:
        if next_offsets.get(row[0], -1) < row[1] + 1:
            next_offsets[row[0]] = row[1] + 1
        if row[2]:
            quarantined += 1
            for name in row[2]:
                failures[name] += 1
        else:
            valid.append(row)
    return BatchStats(len(rows), quarantined, failures, next_offsets), valid


def rule_failure_counts(checked: DataFrame) -> dict[str, int]:
    """Return, for every rule, how many records failed it."""
    stats, _ = summarize(checked.select("partition", "offset", "failed_rules").collect())
    return stats.rule_failures


# ---- hourly aggregates (jobs/aggregates.py) ------------------------------------------------

AGGREGATE_METRICS = ("readings", "temperature_min_c", "temperature_mean_c", "temperature_max_c", "temperature_p95_c",
                     "humidity_min_pct", "humidity_mean_pct", "humidity_max_pct", "humidity_p95_pct",
                     "ok_readings", "warning_readings", "critical_readings", "anomalies")
CITY_AGGREGATE_COLUMNS = ("hour_start_utc", "city", "readings", "sensors", *AGGREGATE_METRICS[1:])
SENSOR_AGGREGATE_COLUMNS = ("hour_start_utc", "sensor_id", "city", *AGGREGATE_METRICS)


def bronze_as_kafka(bronze_rows: DataFrame) -> DataFrame:
    """Return bronze rows shaped like the Kafka source's rows, so `parse` reads them unchanged."""
    from pyspark.sql import functions as F

    return bronze_rows.select("key", "value", "topic", "partition", "offset",
                              F.col("kafka_timestamp").alias("timestamp"))


def hourly_readings(checked: DataFrame, thresholds: Thresholds, lateness_hours: int) -> DataFrame:
    """Return the valid readings that count for their hour: classified like the stream does,
    each event_id once (its first copy by Kafka timestamp, partition, offset), and only if it
    reached Kafka before its hour ended plus `lateness_hours` (so an hour's final figures never
    depend on when they were computed)."""
    from pyspark.sql import functions as F

    valid = checked.where(F.size("failed_rules") == 0).select(*curated_columns(thresholds), "kafka_timestamp")
    return counted_readings(valid, lateness_hours)


def counted_readings(readings: DataFrame, lateness_hours: int) -> DataFrame:
    """Return the rows of `readings` (valid records: curated columns and kafka_timestamp) that
    count for their hour (see `hourly_readings`), with `hour_start_utc`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first_copy = Window.partitionBy("event_id").orderBy("kafka_timestamp", "kafka_partition", "kafka_offset")
    counted = (readings.withColumn("_copy", F.row_number().over(first_copy))
               .where(F.col("_copy") == 1).drop("_copy")
               .withColumn("hour_start_utc", F.date_trunc("hour", "event_time")))
    deadline = F.col("hour_start_utc") + F.make_dt_interval(hours=F.lit(1 + lateness_hours))
    return counted.where(F.col("kafka_timestamp") < deadline)


def _metrics(anomaly: Column) -> list[Column]:
    """Return the aggregate columns shared by the city and the sensor grain (AGGREGATE_METRICS)."""
    from pyspark.sql import functions as F

    def mean(column: str) -> Column:
        # exact decimal arithmetic: the same rows give the same mean whatever the partitioning
        return F.round(F.avg(F.col(column).cast("decimal(12,4)")), 3)

    def count_of(status: str) -> Column:
        return F.count(F.when(F.col("status") == status, 1))

    return [
        F.count(F.lit(1)).alias("readings"),
        F.min("temperature_c").alias("temperature_min_c"),
        mean("temperature_c").alias("temperature_mean_c"),
        F.max("temperature_c").alias("temperature_max_c"),
        F.percentile("temperature_c", F.lit(0.95)).alias("temperature_p95_c"),
        F.min("humidity_pct").alias("humidity_min_pct"),
        mean("humidity_pct").alias("humidity_mean_pct"),
        F.max("humidity_pct").alias("humidity_max_pct"),
        F.percentile("humidity_pct", F.lit(0.95)).alias("humidity_p95_pct"),
        count_of("OK").alias("ok_readings"),
        count_of("WARNING").alias("warning_readings"),
        count_of("CRITICAL").alias("critical_readings"),
        F.count(F.when(anomaly, 1)).alias("anomalies"),
    ]


def with_anomalies(readings: DataFrame, anomaly_delta_c: float) -> DataFrame:
    """Return readings with `anomaly`: temperature more than `anomaly_delta_c` away from the
    median of its sensor's readings in the same hour (heat spikes, stuck-then-jump sensors)."""
    from pyspark.sql import functions as F

    medians = readings.groupBy("hour_start_utc", "sensor_id").agg(
        F.percentile("temperature_c", F.lit(0.5)).alias("_median_c"))
    return (readings.join(medians, ["hour_start_utc", "sensor_id"])
            .withColumn("anomaly", F.abs(F.col("temperature_c") - F.col("_median_c")) > anomaly_delta_c)
            .drop("_median_c"))


def hourly_city_aggregates(flagged: DataFrame) -> DataFrame:
    """Return one row per (hour, city) of readings flagged by `with_anomalies`."""
    from pyspark.sql import functions as F

    metrics = _metrics(F.col("anomaly"))
    return (flagged.groupBy("hour_start_utc", "city")
            .agg(metrics[0], F.count_distinct("sensor_id").alias("sensors"), *metrics[1:])
            .select(*CITY_AGGREGATE_COLUMNS))


def hourly_sensor_aggregates(flagged: DataFrame) -> DataFrame:
    """Return one row per (hour, sensor) of readings flagged by `with_anomalies`."""
    from pyspark.sql import functions as F

    # a sensor belongs to one city; min() keeps the result deterministic should one ever move
    return (flagged.groupBy("hour_start_utc", "sensor_id")
            .agg(F.min("city").alias("city"), *_metrics(F.col("anomaly")))
            .select(*SENSOR_AGGREGATE_COLUMNS))
