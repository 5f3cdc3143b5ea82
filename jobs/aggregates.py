"""Hourly aggregates: bronze (the lake) -> per-city and per-sensor rows in PostgreSQL.

Usage (Airflow's iot_aggregates DAG runs it once per hour of data; ad hoc):

    stack/bin/stackctl spark-submit jobs/aggregates.py --start 2026-11-26T10:00:00Z --end 2026-11-26T13:00:00Z

It reads bronze through the stream's own parse and validate (jobs/transform.py), so hours
older than PostgreSQL's retention can be aggregated again from the lake, and replaces exactly
the hours it computes, in one transaction: a rerun or a backfill of an hour gives identical rows.

Late events: an event counts for the hour of its event_time if it reached Kafka before that
hour ended plus AGGREGATES_LATENESS_HOURS (default 2). Each run covers the hours of its
window and the lateness hours before it, so an hour is final after the run of the hour that
follows it by the lateness; later arrivals stay in bronze and quarantine but not in aggregates.

Incremental: a run computes only the hours that need it (--recompute changed, the default).
Table aggregate_hours records, per hour, what its rows were computed from (the inputs: table,
lateness, thresholds, derivation version; every record stamped before --complete-before, and
the Kafka offsets read). A run reads bronze from the earliest point any hour may have changed,
computes the hours never computed under the same inputs, and those that a record new to them
(stamped after, and past the offsets read) counts for; the others keep their rows. The hourly
DAG's run thus reads its own hour, not three. --recompute all computes every hour.

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
from common.pipeline import PipelineNames
from common.postgres import connection, in_schema
from jobs.hourly import (
    CITY_AGGREGATE_COLUMNS,
    SENSOR_AGGREGATE_COLUMNS,
    bronze_as_kafka,
    counted_readings,
    hourly_city_aggregates,
    hourly_sensor_aggregates,
    with_anomalies,
)
from jobs.session import pg_connect_kwargs
from jobs.transform import Thresholds, curated_columns, parse, validate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("jobs.aggregates")

# Bump when a change to the derivation (jobs/hourly functions, rules, classification) changes
# an hour's figures: every hour recorded under another version is computed again.
DERIVATION_VERSION = 1


def earliest_stamp(hour: datetime) -> datetime:
    """Return the earliest Kafka timestamp a valid event of `hour` can have (the contract's
    future skew: an event_time further ahead of its Kafka timestamp fails a rule)."""
    return hour - timedelta(seconds=MAX_FUTURE_SKEW_SECONDS)


@dataclass(frozen=True)
class HourState:
    """What an hour's stored aggregates were computed from (table aggregate_hours): every
    bronze record stamped before `complete_before`, and every one at or below `seen_offsets`
    ("topic:partition" -> offset) of its Kafka partition. A record outside both is new to it."""

    inputs: str
    complete_before: datetime
    seen_offsets: dict[str, int]


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
    # every record stamped before this instant is in bronze (the DAG's sensor checked it; its
    # data interval's end): the hours computed are recorded as such, for later runs to skip
    complete_before: datetime | None = None
    recompute_all: bool = False  # --recompute all: every hour of the window, whatever changed

    @property
    def hours(self) -> list[datetime]:
        """Return the window's hours, oldest first."""
        return [self.start + timedelta(hours=k) for k in range((self.end - self.start) // timedelta(hours=1))]

    @property
    def inputs(self) -> str:
        """Return what an hour's figures depend on besides its records: an hour recorded with
        other inputs (a threshold, the lateness, the table, the derivation's version) is
        computed again."""
        from dataclasses import asdict

        from jobs.maintenance import normalise_location

        thresholds = ",".join(f"{k}={v}" for k, v in asdict(self.thresholds).items())
        return (f"v{DERIVATION_VERSION} bronze={normalise_location(self.bronze_path)} lateness_h={self.lateness_hours} "
                f"anomaly_delta_c={self.anomaly_delta_c} {thresholds}")

    @property
    def bronze_from(self) -> datetime:
        """Return the earliest Kafka timestamp an event of the window can have."""
        return earliest_stamp(self.start)

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


def read_window(spark: SparkSession, settings: AggregateSettings, since: datetime) -> DataFrame:
    """Return the bronze rows stamped from `since` until the window's lateness ends
    (partition-pruned by date, and Delta skips the files whose Kafka timestamps lie outside)."""
    from pyspark.sql import functions as F

    bronze = spark.read.format("delta").load(settings.bronze_path)
    return bronze.where(
        (F.col("kafka_date") >= F.lit(since.date()))
        & (F.col("kafka_date") <= F.lit(settings.bronze_until.date()))
        & (F.col("kafka_timestamp") >= F.lit(since))
        & (F.col("kafka_timestamp") < F.lit(settings.bronze_until)))


@dataclass
class Computed:
    """One run's outcome: the rows of the hours it computed, and what to record about them."""

    hours: list[datetime]  # computed (their rows replace the stored ones), oldest first
    city: list
    sensor: list
    bronze_rows: int  # bronze rows read
    states: dict[datetime, HourState]  # to record: the hours computed and the untouched ones advanced
    forget: list[datetime]  # hours computed whose state cannot be recorded (no --complete-before)


def scan_start(compute_hours: list[datetime], known: dict[datetime, HourState]) -> datetime:
    """Return the earliest Kafka timestamp to read: all of each hour to compute, and for every
    hour already known, the records that may be new to it."""
    return min([earliest_stamp(h) for h in compute_hours] + [k.complete_before for k in known.values()])


def key_column():
    """Return the records' "topic:partition" (HourState.seen_offsets' key)."""
    from pyspark.sql import functions as F

    return F.concat_ws(":", F.col("kafka_topic"), F.col("kafka_partition").cast("string"))


def touched_hours(records: DataFrame, settings: AggregateSettings, known: dict[datetime, HourState]) -> set[datetime]:
    """Return the known hours that a valid record new to them would count for."""
    from functools import reduce

    from pyspark.sql import functions as F

    if not known:
        return set()
    hour = F.date_trunc("hour", "event_time")
    conditions = []
    for h, state in known.items():
        condition = ((hour == F.lit(h)) & (F.col("kafka_timestamp") >= F.lit(state.complete_before))
                     & (F.col("kafka_timestamp") < F.lit(h + timedelta(hours=1 + settings.lateness_hours))))
        if state.seen_offsets:
            seen = F.create_map(*[F.lit(x) for kv in sorted(state.seen_offsets.items()) for x in kv])
            condition &= F.col("kafka_offset") > F.coalesce(F.element_at(seen, key_column()), F.lit(-1))
        conditions.append(condition)
    new = records.where(F.col("_valid") & reduce(lambda x, y: x | y, conditions))
    # collected timestamps are naive local times: astimezone() reads them as such
    return {row[0].astimezone(UTC) for row in new.select(hour).distinct().collect()}


def compute(spark: SparkSession, settings: AggregateSettings,
            stored: dict[datetime, HourState] | None = None) -> Computed:
    """Return the aggregates of the window's hours that need computing: those with no stored
    state under the same inputs (`stored`, from aggregate_hours), and those a record new to
    their state counts for. `settings.recompute_all`: every hour."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not DeltaTable.isDeltaTable(spark, settings.bronze_path):
        raise NothingToAggregate(
            f"no Delta table at {settings.bronze_path}: check --bronze-path / BRONZE_PATH (the stream creates "
            "bronze with its first micro-batch). Nothing was replaced.")
    known = {} if settings.recompute_all else {
        h: state for h, state in (stored or {}).items() if h in settings.hours and state.inputs == settings.inputs}
    compute_hours = [h for h in settings.hours if h not in known]
    start = scan_start(compute_hours, known)
    cached = []
    try:
        while True:
            records = read_records(spark, settings, start)
            cached.append(records)
            # one job: the rows read, and the last offset read of each Kafka partition
            per_partition = records.groupBy(key_column()).agg(F.count(F.lit(1)), F.max("kafka_offset")).collect()
            bronze_rows = sum(row[1] for row in per_partition)
            if bronze_rows == 0 and compute_hours:
                raise NothingToAggregate(
                    f"no bronze rows in {settings.bronze_path} with Kafka timestamps {start.isoformat()} .. "
                    f"{settings.bronze_until.isoformat()}: a wrong table, a window the lake no longer holds, or no "
                    "readings in it. Nothing was replaced.")
            touched = touched_hours(records, settings, known)
            if touched:  # late records: their hours are computed again, from all of their records
                log.info("records that arrived after they were computed count for %s: computing them again",
                         ", ".join(h.isoformat() for h in sorted(touched)))
                compute_hours = sorted(set(compute_hours) | touched)
                known = {h: state for h, state in known.items() if h not in touched}
            needed = scan_start(compute_hours, known)
            if needed >= start:
                break
            start = needed  # a touched hour began before what was read: read again from there
            cached.pop().unpersist()
        seen = {row[0]: row[2] for row in per_partition}
        city, sensor = aggregate_hours(records, settings, compute_hours)
        states, forget = {}, []
        if settings.complete_before is None:
            forget = compute_hours
        else:
            for h in compute_hours:
                states[h] = HourState(settings.inputs, settings.complete_before, seen)
            for h, old in known.items():  # read through, nothing new for it: advanced
                merged = {k: max(old.seen_offsets.get(k, -1), seen.get(k, -1)) for k in old.seen_offsets | seen}
                states[h] = HourState(old.inputs, max(old.complete_before, settings.complete_before), merged)
        return Computed(compute_hours, city, sensor, bronze_rows, states, forget)
    finally:
        for frame in reversed(cached):
            frame.unpersist()


def read_records(spark: SparkSession, settings: AggregateSettings, stamped_from: datetime) -> DataFrame:
    """Return the bronze records stamped from `stamped_from`, each parsed and validated once and
    kept as the small row the aggregates need (not the raw value), cached: it serves the
    count, the new-record check, the first-copy dedup, the medians and both groupings (before,
    the bronze rows were cached and every record parsed and deduplicated twice)."""
    from pyspark.sql import functions as F

    checked = validate(parse(bronze_as_kafka(read_window(spark, settings, stamped_from))))
    return checked.select((F.size("failed_rules") == 0).alias("_valid"),
                          *curated_columns(settings.thresholds), "kafka_timestamp").persist()


def aggregate_hours(records: DataFrame, settings: AggregateSettings, hours: list[datetime]) -> tuple[list, list]:
    """Return the city rows and the sensor rows of `hours` from the cached records."""
    from pyspark.sql import functions as F

    if not hours:
        return [], []
    readings = counted_readings(records.where("_valid").drop("_valid"), settings.lateness_hours)
    readings = readings.where(F.col("hour_start_utc").isin([F.lit(h) for h in hours])).persist()
    flagged = with_anomalies(readings, settings.anomaly_delta_c).persist()
    try:
        city = hourly_city_aggregates(flagged).orderBy("hour_start_utc", "city").collect()
        sensor = hourly_sensor_aggregates(flagged).orderBy("hour_start_utc", "sensor_id").collect()
        return city, sensor
    finally:
        flagged.unpersist()
        readings.unpersist()


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


def _connection(settings: AggregateSettings):
    return connection(settings.pg_connect, "iot-aggregates")


def stored_states(settings: AggregateSettings) -> dict[datetime, HourState]:
    """Return what the window's hours were last computed from (aggregate_hours)."""
    from psycopg2 import errors

    with _connection(settings) as conn, conn.cursor() as cur:
        try:
            cur.execute(in_schema(settings.pg_schema, "select hour_start_utc, inputs, complete_before, seen_offsets "
                                                      "from {schema}.aggregate_hours "
                                                      "where hour_start_utc >= %s and hour_start_utc < %s"),
                        (settings.start, settings.end))
        except errors.UndefinedTable as exc:
            raise RuntimeError(
                f"no table {settings.pg_schema}.aggregate_hours: check --pg-schema / PIPELINE_SCHEMA, or apply "
                "sql/003_batch_tables.sql to it (`make up` does; the Docker stack applies sql/ only to a new "
                "PostgreSQL volume). Nothing was replaced.") from exc
        return {hour.astimezone(UTC): HourState(inputs, complete.astimezone(UTC),
                                                {key: int(offset) for key, offset in seen.items()})
                for hour, inputs, complete, seen in cur.fetchall()}


def replace_window(settings: AggregateSettings, computed: Computed) -> None:
    """Replace the computed hours in both aggregate tables, record what they were computed from,
    and log the run, in one transaction."""
    import json

    def q(text: str, **identifiers):
        return in_schema(settings.pg_schema, text, **identifiers)

    with _connection(settings) as conn, conn.cursor() as cur:
        cur.execute("set local timezone = 'UTC'")
        # two runs at once (max_active_runs=2, a backfill) replace their hours one after the other
        cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"iot-aggregates {settings.pg_schema}",))
        for table, rows, columns in (("sensor_readings_hourly_city", computed.city, CITY_AGGREGATE_COLUMNS),
                                     ("sensor_readings_hourly_sensor", computed.sensor, SENSOR_AGGREGATE_COLUMNS)):
            cur.execute(q("delete from {schema}.{table} where hour_start_utc = any(%s)", table=table),
                        (computed.hours,))
            cur.copy_expert(q("copy {schema}.{table} ({columns}) from stdin with (format csv)", table=table,
                              columns=columns).as_string(cur), _csv(rows, columns))
        cur.execute(q("delete from {schema}.aggregate_hours where hour_start_utc = any(%s)"), (computed.forget,))
        cur.execute(q("insert into {schema}.aggregate_runs (window_start_utc, window_end_utc, bronze_rows_read, "
                      "city_rows, sensor_rows, hours_replaced) values (%s, %s, %s, %s, %s, %s) returning run_id"),
                    (settings.start, settings.end, computed.bronze_rows, len(computed.city), len(computed.sensor),
                     len(computed.hours)))
        run_id = cur.fetchone()[0]
        for hour, state in sorted(computed.states.items()):
            cur.execute(q("insert into {schema}.aggregate_hours (hour_start_utc, inputs, complete_before, "
                          "seen_offsets, run_id) values (%s, %s, %s, %s, %s) on conflict (hour_start_utc) do "
                          "update set inputs = excluded.inputs, complete_before = excluded.complete_before, "
                          "seen_offsets = excluded.seen_offsets, run_id = excluded.run_id"),
                        (hour, state.inputs, state.complete_before, json.dumps(state.seen_offsets), run_id))


def parse_instant(text: str) -> datetime:
    """Return an ISO-8601 instant with an offset (Z allowed) as an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (write e.g. 2026-11-26T10:00:00Z)")
    return value


def build_parser(env: Env, pipeline: PipelineNames) -> argparse.ArgumentParser:
    """The job's command line; defaults from the environment, names from `pipeline`."""
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
                        help=f"bronze Delta table (empty: BRONZE_PATH, the pipeline's: {pipeline.bronze_path})")
    parser.add_argument("--pg-schema", default="",
                        help=f"PostgreSQL schema of the aggregate tables (empty: PIPELINE_SCHEMA, the pipeline's: "
                             f"{pipeline.pg_schema})")
    parser.add_argument("--recompute", choices=("changed", "all"), default="changed",
                        help="changed (default): only the hours never computed under the same inputs or that "
                             "records have reached since (aggregate_hours); all: every hour of the window")
    parser.add_argument("--complete-before", type=parse_instant, default=None,
                        help="an instant before which every record is known to be in bronze (the DAG passes its "
                             "data interval's end, which its sensor has checked); the hours computed are then "
                             "recorded so that later runs skip them until new records reach them. Without it "
                             "they are computed again next time")
    parser.add_argument("--master", default=None, help="Spark master when run with plain python")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, env: Env,
                       pipeline: PipelineNames) -> AggregateSettings:
    """The run's settings; a bad argument exits 2 through `parser`, naming it."""
    if args.complete_before is not None and args.complete_before > datetime.now(UTC):
        parser.error(f"--complete-before: {args.complete_before.isoformat()} is in the future: records stamped "
                     "before it may not have reached bronze yet")
    if args.lateness_hours < 0:
        parser.error("--lateness-hours must be >= 0")
    try:
        start, end = hour_window(args.start, args.end, args.lateness_hours)
    except ValueError as exc:
        parser.error(f"--start/--end: {exc}")
    names = pipeline.with_params(vars(args))  # the DAG passes an unset param as ""
    settings = AggregateSettings(
        start=start, end=end,
        bronze_path=names.bronze_path,
        pg_schema=names.pg_schema,
        pg_connect=pg_connect_kwargs(env),
        thresholds=Thresholds.from_env(env),
        lateness_hours=args.lateness_hours,
        anomaly_delta_c=env.get_float("AGGREGATES_ANOMALY_DELTA_C", 10.0),
        lake_days=env.get_int("RETENTION_LAKE_DAYS", 365),
        complete_before=args.complete_before.astimezone(UTC) if args.complete_before else None,
        recompute_all=args.recompute == "all",
    )
    try:
        check_within_retention(settings, datetime.now(UTC))
    except ValueError as exc:
        parser.error(f"--start: {exc}")
    return settings


def run(spark: SparkSession, settings: AggregateSettings) -> int:
    """Compute the hours that need it and replace them; return the exit status."""
    t0 = time.monotonic()
    log.info("aggregating hours %s .. %s from %s (recompute %s)", settings.start.isoformat(),
             settings.end.isoformat(), settings.bronze_path, "all" if settings.recompute_all else "changed")
    try:
        computed = compute(spark, settings, stored_states(settings))
    except NothingToAggregate as exc:
        log.error("%s", exc)
        return 1
    replace_window(settings, computed)
    skipped = [h for h in settings.hours if h not in computed.hours]
    log.info("replaced %d of the window's %d hours in %s (%s): %d city rows, %d sensor rows from %d bronze rows "
             "in %.1fs; %s", len(computed.hours), len(settings.hours), settings.pg_schema,
             ", ".join(h.strftime("%Y-%m-%dT%H") for h in computed.hours) or "none",
             len(computed.city), len(computed.sensor), computed.bronze_rows, time.monotonic() - t0,
             f"unchanged since computed: {', '.join(h.strftime('%Y-%m-%dT%H') for h in skipped)}" if skipped
             else "none skipped")
    return 0


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
    pipeline = PipelineNames.from_env(env)
    parser = build_parser(env, pipeline)
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args, env, pipeline)
    from jobs.session import build_spark

    spark = build_spark("iot-aggregates", env, master=args.master)
    try:
        return run(spark, settings)
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
