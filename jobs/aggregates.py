"""Hourly aggregates: bronze (the lake) -> per-city and per-sensor rows in PostgreSQL.

Usage (Airflow's iot_aggregates DAG runs it once per hour of data; ad hoc):

    stack/bin/stackctl spark-submit jobs/aggregates.py --start 2026-11-26T10:00:00Z --end 2026-11-26T13:00:00Z

It reads bronze through the stream's own parse and validate (jobs/transform.py), so hours
older than PostgreSQL's retention can be aggregated again from the lake, and replaces exactly
the hours it computes, in one transaction: a rerun or a backfill of an hour gives identical rows.

Late events: an event counts for the hour of its event_time if it reached Kafka before that
hour ended plus AGGREGATES_LATENESS_HOURS (default 2). Each run recomputes the hours of its
window and the lateness hours before it, so an hour is final after the run of the hour that
follows it by the lateness; later arrivals stay in bronze and quarantine but not in aggregates.

It never replaces aggregates with nothing: a window with no bronze table (a typo in
--bronze-path) or no bronze rows fails (exit 1), and a window older than the lake's retention
(RETENTION_LAKE_DAYS, whose partitions retention has deleted or will delete) is refused (exit 2).
"""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from common.contract import MAX_FUTURE_SKEW_SECONDS
from common.env import Env
from jobs.session import pg_connect_kwargs
from jobs.transform import (
    CITY_AGGREGATE_COLUMNS,
    SENSOR_AGGREGATE_COLUMNS,
    Thresholds,
    bronze_as_kafka,
    hourly_city_aggregates,
    hourly_readings,
    hourly_sensor_aggregates,
    parse,
    validate,
    with_anomalies,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("jobs.aggregates")


@dataclass(frozen=True)
class AggregateSettings:
    """What one run of the aggregates job reads, computes and replaces."""

    start: datetime  # first hour to replace (inclusive), hour-aligned, UTC
    end: datetime  # end of the window (exclusive), hour-aligned, UTC
    bronze_path: str
    pg_schema: str
    pg_connect: dict
    thresholds: Thresholds
    lateness_hours: int
    anomaly_delta_c: float
    lake_days: int = 365  # RETENTION_LAKE_DAYS: the lake's partitions older than this are deleted

    @property
    def bronze_from(self) -> datetime:
        """Return the earliest Kafka timestamp an event of the window can have."""
        return self.start - timedelta(seconds=MAX_FUTURE_SKEW_SECONDS)

    @property
    def bronze_until(self) -> datetime:
        """Return the Kafka timestamp after which no event counts for the window."""
        return self.end + timedelta(hours=self.lateness_hours)


def hour_window(start: datetime, end: datetime, lateness_hours: int) -> tuple[datetime, datetime]:
    """Return the hours a run over the data interval [start, end) replaces: the interval's
    hours and the `lateness_hours` before it (still open to late events)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must carry a UTC offset")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start.minute or start.second or start.microsecond or end.minute or end.second or end.microsecond:
        raise ValueError(f"start and end must be whole hours, got {start.isoformat()} .. {end.isoformat()}")
    if end <= start:
        raise ValueError(f"end must be after start, got {start.isoformat()} .. {end.isoformat()}")
    return start - timedelta(hours=lateness_hours), end


class NothingToAggregate(RuntimeError):
    """The window has no bronze table or no bronze rows: its aggregates are left as they are."""


def oldest_kept_date(now: datetime, lake_days: int) -> date:
    """Return the oldest kafka_date the lake is sure to hold `now`: retention deletes the
    partitions older than RETENTION_LAKE_DAYS (orchestration/retention.py)."""
    return (now - timedelta(days=lake_days)).date()


def check_within_retention(settings: AggregateSettings, now: datetime) -> None:
    """Raise ValueError when the window reads bronze partitions retention may have deleted."""
    oldest = oldest_kept_date(now, settings.lake_days)
    if settings.bronze_from.date() < oldest:
        raise ValueError(
            f"the window {settings.start.isoformat()} .. {settings.end.isoformat()} reads bronze from "
            f"{settings.bronze_from.date()}, older than the lake's retention: RETENTION_LAKE_DAYS="
            f"{settings.lake_days} keeps partitions from {oldest} on. Its aggregates are kept as they are.")


def read_window(spark: SparkSession, settings: AggregateSettings) -> DataFrame:
    """Return the bronze rows that can hold events of the window (partition-pruned by date)."""
    from pyspark.sql import functions as F

    bronze = spark.read.format("delta").load(settings.bronze_path)
    return bronze.where(
        (F.col("kafka_date") >= F.lit(settings.bronze_from.date()))
        & (F.col("kafka_date") <= F.lit(settings.bronze_until.date()))
        & (F.col("kafka_timestamp") >= F.lit(settings.bronze_from))
        & (F.col("kafka_timestamp") < F.lit(settings.bronze_until)))


def compute(spark: SparkSession, settings: AggregateSettings) -> tuple[list, list, int]:
    """Return the city rows, the sensor rows and the bronze rows read, for the window."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not DeltaTable.isDeltaTable(spark, settings.bronze_path):
        raise NothingToAggregate(
            f"no Delta table at {settings.bronze_path}: check --bronze-path / BRONZE_PATH (the stream creates "
            "bronze with its first micro-batch). Nothing was replaced.")
    bronze = read_window(spark, settings).persist()
    try:
        bronze_rows = bronze.count()
        if bronze_rows == 0:
            raise NothingToAggregate(
                f"no bronze rows in {settings.bronze_path} with Kafka timestamps {settings.bronze_from.isoformat()} "
                f".. {settings.bronze_until.isoformat()}: a wrong table, a window the lake no longer holds, or no "
                "readings in it. Nothing was replaced.")
        readings = hourly_readings(validate(parse(bronze_as_kafka(bronze))), settings.thresholds,
                                   settings.lateness_hours)
        readings = readings.where((F.col("hour_start_utc") >= F.lit(settings.start))
                                  & (F.col("hour_start_utc") < F.lit(settings.end)))
        flagged = with_anomalies(readings, settings.anomaly_delta_c).persist()
        city = hourly_city_aggregates(flagged).orderBy("hour_start_utc", "city").collect()
        sensor = hourly_sensor_aggregates(flagged).orderBy("hour_start_utc", "sensor_id").collect()
        flagged.unpersist()
        return city, sensor, bronze_rows
    finally:
        bronze.unpersist()


def _csv(rows: list, columns: tuple[str, ...]) -> io.StringIO:
    """Return rows as CSV for COPY; timestamps in ISO-8601 with their offset (PySpark collects
    them as naive local times, which astimezone() reads as such)."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([row[c].astimezone(UTC).isoformat() if isinstance(row[c], datetime) else row[c]
                         for c in columns])
    buffer.seek(0)
    return buffer


def replace_window(settings: AggregateSettings, city: list, sensor: list, bronze_rows: int) -> None:
    """Replace the window's hours in both aggregate tables and log the run, in one transaction."""
    import psycopg2
    from psycopg2 import sql

    def q(text: str):
        return sql.SQL(text).format(schema=sql.Identifier(settings.pg_schema))

    conn = psycopg2.connect(**settings.pg_connect, connect_timeout=10, application_name="iot-aggregates")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("set local timezone = 'UTC'")
            for table, rows, columns in (("sensor_readings_hourly_city", city, CITY_AGGREGATE_COLUMNS),
                                         ("sensor_readings_hourly_sensor", sensor, SENSOR_AGGREGATE_COLUMNS)):
                ident = sql.Identifier(settings.pg_schema, table)
                cur.execute(sql.SQL("delete from {} where hour_start_utc >= %s and hour_start_utc < %s").format(ident),
                            (settings.start, settings.end))
                cur.copy_expert(sql.SQL("copy {} ({}) from stdin with (format csv)").format(
                    ident, sql.SQL(", ").join(map(sql.Identifier, columns))).as_string(cur), _csv(rows, columns))
            cur.execute(q("insert into {schema}.aggregate_runs (window_start_utc, window_end_utc, bronze_rows_read, "
                          "city_rows, sensor_rows) values (%s, %s, %s, %s, %s)"),
                        (settings.start, settings.end, bronze_rows, len(city), len(sensor)))
    finally:
        conn.close()


def parse_instant(text: str) -> datetime:
    """Return an ISO-8601 instant with an offset (Z allowed) as an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (write e.g. 2026-11-26T10:00:00Z)")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, compute the window's aggregates, replace them in PostgreSQL."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # `stackctl spark-submit` hands its children SIGINT and SIGTERM ignored (see stack/bin/stackctl);
    # a batch job is idempotent and may simply die on them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    env = Env()
    bucket = env.get("LAKEHOUSE_BUCKET", "lakehouse")
    parser = argparse.ArgumentParser(
        prog="spark-submit jobs/aggregates.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--start", type=parse_instant, required=True,
                        help="data interval start, a whole hour with offset (Airflow: data_interval_start)")
    parser.add_argument("--end", type=parse_instant, required=True,
                        help="data interval end, exclusive, a whole hour with offset (data_interval_end)")
    parser.add_argument("--lateness-hours", type=int, default=env.get_int("AGGREGATES_LATENESS_HOURS", 2),
                        help="hours after an hour's end that its late events still count; the run also "
                             "recomputes that many hours before --start (default AGGREGATES_LATENESS_HOURS or 2)")
    parser.add_argument("--bronze-path", default="",
                        help="bronze Delta table (default BRONZE_PATH or s3a://<bucket>/bronze/sensor_readings)")
    parser.add_argument("--pg-schema", default="", help="PostgreSQL schema of the aggregate tables "
                                                        "(default PIPELINE_SCHEMA or iot)")
    parser.add_argument("--master", default=None, help="Spark master when run with plain python")
    args = parser.parse_args(argv)
    if args.lateness_hours < 0:
        parser.error("--lateness-hours must be >= 0")
    try:
        start, end = hour_window(args.start, args.end, args.lateness_hours)
    except ValueError as exc:
        parser.error(f"--start/--end: {exc}")
    settings = AggregateSettings(
        start=start, end=end,
        bronze_path=args.bronze_path or env.get("BRONZE_PATH", f"s3a://{bucket}/bronze/sensor_readings"),
        pg_schema=args.pg_schema or env.get("PIPELINE_SCHEMA", "iot"),
        pg_connect=pg_connect_kwargs(env),
        thresholds=Thresholds.from_env(env),
        lateness_hours=args.lateness_hours,
        anomaly_delta_c=env.get_float("AGGREGATES_ANOMALY_DELTA_C", 10.0),
        lake_days=env.get_int("RETENTION_LAKE_DAYS", 365),
    )
    try:
        check_within_retention(settings, datetime.now(UTC))
    except ValueError as exc:
        parser.error(f"--start: {exc}")
    from jobs.session import build_spark

    spark = build_spark("iot-aggregates", env, master=args.master)
    try:
        t0 = time.monotonic()
        log.info("aggregating hours %s .. %s from %s (Kafka timestamps %s .. %s)", settings.start.isoformat(),
                 settings.end.isoformat(), settings.bronze_path, settings.bronze_from.isoformat(),
                 settings.bronze_until.isoformat())
        try:
            city, sensor, bronze_rows = compute(spark, settings)
        except NothingToAggregate as exc:
            log.error("%s", exc)
            return 1
        replace_window(settings, city, sensor, bronze_rows)
        log.info("replaced %d hours in %s: %d city rows, %d sensor rows from %d bronze rows in %.1fs",
                 (settings.end - settings.start) // timedelta(hours=1), settings.pg_schema, len(city), len(sensor),
                 bronze_rows, time.monotonic() - t0)
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
