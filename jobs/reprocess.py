"""Rebuild curated rows from bronze: the lake is the source of truth.

Usage (the manual Airflow DAG iot_reprocess runs it with the same options as params):

    stack/bin/stackctl spark-submit jobs/reprocess.py --dry-run            # what would change
    stack/bin/stackctl spark-submit jobs/reprocess.py --from 2026-11-30 --to 2026-11-30

When: PostgreSQL was lost; a validation rule or a status threshold changed; a bug in the
derivation was fixed. It replays bronze through the stream's own parse, validate and classify
code (jobs/transform.py) with the current rules and STATUS_* thresholds, and makes the curated
rows of the range equal to what that derives: missing rows are inserted, changed values and
statuses updated, rows that now fail a rule (or are no longer the kept copy of their event)
deleted. Bronze is never modified; the stream keeps running.

- Range: Kafka dates (bronze's kafka_date), --from and --to inclusive; by default the whole
  table. Only records below the offsets the stream has committed (its last health row) are
  read, so the run never races the stream for a record: later ones are the stream's.
- --as-of reads bronze as it was at a Delta version (a number) or timestamp (time travel).
- Copies of one event_id: the first copy by Kafka timestamp, then partition, then offset is
  kept, as the stream keeps the first it reads (copies of an event share its key, so they are in
  one partition, where the first read is the lowest offset) and as the hourly aggregates count.
  A kept copy outside the range (in curated, from a record the range does not cover) stays.
- Chunks: each Kafka partition's offsets in pieces of --chunk-rows records. Each chunk is one
  PostgreSQL transaction, which also records the chunk as done (reprocess_chunks), so a run
  killed at any point resumes after its last committed chunk: run it again with the same
  options (the same bronze version and offsets are read again), and nothing is written twice.
  Two chunks are applied at once, never two of one Kafka partition.
- Quarantine: the current rules' decisions for the range are compared with the quarantine
  table (promoted out of it, newly quarantined, reasons changed). When they differ, the run
  stages the range's quarantine rows in a Delta table of its own and hands them to the stream,
  the quarantine table's one writer, as lake maintenance does: the stream MERGEs them in
  between two micro-batches, in one commit (jobs/maintenance.requarantine). The run waits
  --quarantine-wait seconds for that; a stream that is not running applies it when it starts.
- --dry-run runs every chunk's transaction and rolls it back: the exact counts, nothing written.
- Each run leaves a row in reprocess_runs: range, bronze version, offsets, counts, outcome.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from common.env import Env
from common.pipeline import DEFAULT_REPROCESS_CHUNK_ROWS as DEFAULT_CHUNK_ROWS
from common.pipeline import MAX_REPROCESS_CHUNK_ROWS as MAX_CHUNK_ROWS
from common.pipeline import REPROCESS_NAME_OPTIONS, PipelineNames
from common.postgres import (
    committed_end_offsets,
    connection,
    in_schema,
    lake_maintenance_outcome,
    open_connection,
)
from jobs.hourly import bronze_as_kafka
from jobs.micro_batch import CSV_OPTIONS
from jobs.session import pg_connect_kwargs
from jobs.transform import (
    CURATED_COLUMNS,
    Thresholds,
    curated_columns,
    first_copy_rank,
    parse,
    quarantine,
    validate,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("jobs.reprocess")

LOCK_KEY = "reprocess:{db}.{schema}"
# the curated row's value columns: what an update may change (event_id is the key)
VALUE_COLUMNS = tuple(c for c in CURATED_COLUMNS if c != "event_id")


@dataclass(frozen=True)
class ReprocessSettings:
    names: PipelineNames
    pg_connect: dict
    thresholds: Thresholds
    from_date: date | None = None
    to_date: date | None = None
    as_of: str | None = None
    dry_run: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    requested_by: str = "spark-submit"
    quarantine_wait_seconds: int = 600


@dataclass(frozen=True)
class Chunk:
    """One Kafka partition's offsets [from_offset, to_offset)."""

    number: int
    partition: int
    from_offset: int
    to_offset: int


def plan_chunks(bounds: dict[int, tuple[int, int]], chunk_rows: int) -> list[Chunk]:
    """Return the chunks of `bounds` ({partition: (first offset, last offset + 1)}): each
    partition's offsets in pieces of at most `chunk_rows`, partitions in order."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    chunks: list[Chunk] = []
    for partition in sorted(bounds):
        lo, hi = bounds[partition]
        for start in range(lo, hi, chunk_rows):
            chunks.append(Chunk(len(chunks), partition, start, min(start + chunk_rows, hi)))
    return chunks


@dataclass
class Counts:
    """What a run changes, per kind: curated rows added, removed, reclassified (old -> new
    status), updated (same status, other values), and quarantine decisions promoted (by the rule
    they failed) and newly quarantined (by the rule they fail)."""

    added: Counter = field(default_factory=Counter)          # by status
    removed: Counter = field(default_factory=Counter)        # by the status they had
    reclassified: Counter = field(default_factory=Counter)   # "OLD->NEW"
    updated: Counter = field(default_factory=Counter)        # by status
    unchanged: int = 0
    kept_outside_range: int = 0
    promoted: Counter = field(default_factory=Counter)       # by the rule failed before
    newly_quarantined: Counter = field(default_factory=Counter)  # by the rule failed now
    reasons_changed: int = 0  # in quarantine before and now, for other rules

    @property
    def quarantine_differs(self) -> bool:
        return bool(self.promoted or self.newly_quarantined or self.reasons_changed)

    def add(self, other: Counts) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_json(self) -> dict:
        return {f.name: (dict(sorted(v.items())) if isinstance(v := getattr(self, f.name), Counter) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict) -> Counts:
        return cls(**{k: (Counter(v) if isinstance(v, dict) else v) for k, v in data.items()})

    def report(self) -> str:
        """A table a person reads: one line per kind, its total and its split."""
        lines = []
        for name in ("added", "removed", "reclassified", "updated", "promoted", "newly_quarantined"):
            c: Counter = getattr(self, name)
            split = ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-"
            lines.append(f"  {name.replace('_', ' '):<18} {sum(c.values()):>9}   {split}")
        lines.append(f"  {'reasons changed':<18} {self.reasons_changed:>9}   (quarantined before and now, other rules)")
        lines.append(f"  {'unchanged':<18} {self.unchanged:>9}")
        lines.append(f"  {'kept outside range':<18} {self.kept_outside_range:>9}   "
                     "(the event's kept copy lies outside the range)")
        return "\n".join(lines)


class NothingToReprocess(RuntimeError):
    """No bronze table, or no committed offsets: nothing the run may read."""


def read_bronze(spark: SparkSession, settings: ReprocessSettings) -> tuple[DataFrame, int]:
    """Return bronze as of --as-of (or its latest version), and that version."""
    from delta.tables import DeltaTable

    path = settings.names.bronze_path
    if not DeltaTable.isDeltaTable(spark, path):
        raise NothingToReprocess(f"no Delta table at {path}: check --bronze-path")
    as_of = settings.as_of
    history = DeltaTable.forPath(spark, path).history
    if as_of is None:
        version = history(1).collect()[0].version
    elif as_of.isdigit():
        version = int(as_of)
    else:
        version = history().where(f"timestamp <= '{as_of}'").selectExpr("max(version)").collect()[0][0]
        if version is None:
            raise NothingToReprocess(f"bronze has no version at or before --as-of {as_of}")
    # the version recorded is the one read, even if the stream commits in between
    return spark.read.format("delta").option("versionAsOf", int(version)).load(path), int(version)


def within(ranges: dict[int, tuple[int, int]]):
    """Return a Column: the record's (partition, offset) lies in ranges {partition: [from, to)}."""
    from pyspark.sql import functions as F

    inside = F.lit(False)
    for partition, (lo, hi) in ranges.items():
        inside = inside | ((F.col("partition") == partition) & (F.col("offset") >= lo) & (F.col("offset") < hi))
    return inside


def in_range(bronze: DataFrame, settings: ReprocessSettings, end_offsets: dict[int, int]) -> DataFrame:
    """The bronze records the run covers: the topic's, within the Kafka dates, below the
    stream's committed offsets."""
    from pyspark.sql import functions as F

    rows = bronze.where(F.col("topic") == settings.names.topic)
    if settings.from_date:
        rows = rows.where(F.col("kafka_date") >= F.lit(settings.from_date))
    if settings.to_date:
        rows = rows.where(F.col("kafka_date") <= F.lit(settings.to_date))
    return rows.where(within({partition: (0, offset) for partition, offset in end_offsets.items()}))


def derive(records: DataFrame, thresholds: Thresholds) -> DataFrame:
    """Every record's coordinates, failed rules and, for the kept copy of a valid event, its
    curated row as a CSV line (null otherwise): the stream's own parse, validate, classify."""
    from pyspark.sql import functions as F

    checked = validate(parse(bronze_as_kafka(records)))
    valid = F.size("failed_rules") == 0
    line = F.to_csv(F.struct(*curated_columns(thresholds)), CSV_OPTIONS)
    return (checked
            .withColumn("_event_id", F.when(valid, F.col("_typed.event_id")))
            .withColumn("_copy", F.when(valid, first_copy_rank("_event_id", "kafka_timestamp", "partition", "offset")))
            .select("partition", "offset", "failed_rules",
                    F.when(valid & (F.col("_copy") == 1), line).alias("curated_csv")))


def quarantine_counts(spark: SparkSession, settings: ReprocessSettings, derived: DataFrame,
                      bounds: dict[int, tuple[int, int]]) -> Counts:
    """Promoted (in quarantine, now valid) and newly quarantined (now invalid, not in
    quarantine), by rule, over the range, against the quarantine table as it is now."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    counts = Counts()
    now_bad = derived.where(F.size("failed_rules") > 0).select("partition", "offset", "failed_rules")
    if DeltaTable.isDeltaTable(spark, settings.names.quarantine_path):
        q = spark.read.format("delta").load(settings.names.quarantine_path).where(
            F.col("topic") == settings.names.topic)
        was_bad = q.where(within(bounds)).select("partition", "offset", F.col("failed_rules").alias("was"))
    else:
        was_bad = spark.createDataFrame([], "partition int, offset long, was array<string>")
    # one join, one pass: each record in either side is promoted (only in quarantine), newly
    # quarantined (only now failing) or has its reasons changed (both, other rules)
    both = now_bad.join(was_bad, ["partition", "offset"], "full_outer")
    kind = (F.when(F.col("failed_rules").isNull(), F.lit("promoted"))
            .when(F.col("was").isNull(), F.lit("newly"))
            .when(F.array_sort("failed_rules") != F.array_sort("was"), F.lit("reasons")))
    rules = (F.when(F.col("failed_rules").isNull(), F.col("was"))
             .when(F.col("was").isNull(), F.col("failed_rules"))
             .otherwise(F.array(F.lit(""))))
    found = both.select(kind.alias("kind"), F.explode(rules).alias("rule")).where(F.col("kind").isNotNull())
    for r in found.groupBy("kind", "rule").count().collect():
        if r.kind == "promoted":
            counts.promoted[r.rule] += r["count"]
        elif r.kind == "newly":
            counts.newly_quarantined[r.rule] += r["count"]
        else:
            counts.reasons_changed += r["count"]
    return counts


class RunLog:
    """The run's row in reprocess_runs and its chunks in reprocess_chunks."""

    def __init__(self, settings: ReprocessSettings) -> None:
        self.settings = settings
        self.schema = settings.names.pg_schema

    def sql(self, text: str):
        return in_schema(self.schema, text)

    def find_unfinished(self, cur) -> tuple[int, int, dict[int, int]] | None:
        """Return (run id, bronze version, end offsets) of the last run with the same options
        that did not finish (killed, or failed), to resume it; None when there is none."""
        s = self.settings
        cur.execute(self.sql(
            "select run_id, bronze_version, end_offsets from {schema}.reprocess_runs "
            "where state <> 'done' and query_name = %s and topic = %s and bronze_path = %s "
            "and from_date is not distinct from %s and to_date is not distinct from %s "
            "and as_of is not distinct from %s and thresholds = %s::jsonb and chunk_rows = %s "
            "order by run_id desc limit 1"),
            (s.names.query_name, s.names.topic, s.names.bronze_path, s.from_date, s.to_date, s.as_of,
             json.dumps(dataclasses.asdict(s.thresholds)), s.chunk_rows))
        row = cur.fetchone()
        return (row[0], row[1], {int(p): int(o) for p, o in row[2].items()}) if row else None

    def start(self, cur, version: int, end_offsets: dict[int, int], chunks: int) -> int:
        s = self.settings
        cur.execute(self.sql(
            "insert into {schema}.reprocess_runs (requested_by, query_name, topic, bronze_path, from_date, to_date, "
            "as_of, bronze_version, end_offsets, thresholds, chunk_rows, chunks_total) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning run_id"),
            (s.requested_by, s.names.query_name, s.names.topic, s.names.bronze_path, s.from_date, s.to_date, s.as_of,
             version, json.dumps({str(p): o for p, o in end_offsets.items()}),
             json.dumps(dataclasses.asdict(s.thresholds)), s.chunk_rows, chunks))
        return cur.fetchone()[0]

    def done_chunks(self, cur, run_id: int) -> tuple[set[int], Counts]:
        """Return the chunks the run committed, and what they changed."""
        cur.execute(self.sql("select chunk_no, counts from {schema}.reprocess_chunks where run_id = %s"), (run_id,))
        done, counts = set(), Counts()
        for chunk_no, chunk_counts in cur.fetchall():
            done.add(chunk_no)
            counts.add(Counts.from_json(chunk_counts))
        return done, counts

    def chunk_done(self, cur, run_id: int, chunk: Chunk, rows: int, counts: Counts) -> None:
        cur.execute(self.sql(
            "insert into {schema}.reprocess_chunks (run_id, chunk_no, kafka_partition, from_offset, to_offset, "
            "rows_read, counts) values (%s, %s, %s, %s, %s, %s, %s)"),
            (run_id, chunk.number, chunk.partition, chunk.from_offset, chunk.to_offset, rows,
             json.dumps(counts.as_json())))
        cur.execute(self.sql("update {schema}.reprocess_runs set chunks_done = chunks_done + 1, "
                             "rows_read = rows_read + %s where run_id = %s"), (rows, run_id))

    def finish(self, run_id: int, state: str, counts: Counts, error: str | None = None) -> None:
        with connection(self.settings.pg_connect, "iot-reprocess") as conn, conn.cursor() as cur:
            cur.execute(self.sql("update {schema}.reprocess_runs set state = %s, finished_at = now(), counts = %s, "
                                 "error = %s where run_id = %s"),
                        (state, json.dumps(counts.as_json()), error, run_id))


def apply_chunk(cur, schema: str, topic: str, chunk: Chunk, csv_text: str,
                bounds: dict[int, tuple[int, int]]) -> Counts:
    """Make curated's rows of `chunk` those of `csv_text` (CSV lines of the kept copies of the
    chunk's valid records, CURATED_COLUMNS order) inside the caller's transaction; return what
    changed."""
    counts = Counts()
    columns = ", ".join(CURATED_COLUMNS)

    def q(text: str):
        return in_schema(schema, text)

    cur.execute(q("create temporary table if not exists reprocess_rows "
                  "(like {schema}.sensor_readings including defaults) on commit delete rows"))
    cur.execute("create temporary table if not exists reprocess_bounds "
                "(kafka_partition integer, from_offset bigint, to_offset bigint) on commit delete rows")
    if csv_text:
        cur.copy_expert(f"copy reprocess_rows ({columns}) from stdin with (format csv)", io.StringIO(csv_text))
    cur.copy_expert("copy reprocess_bounds from stdin with (format csv)",
                    io.StringIO("".join(f"{p},{lo},{hi}\n" for p, (lo, hi) in bounds.items())))
    in_run_range = ("exists (select 1 from reprocess_bounds b where c.kafka_topic = %(topic)s "
                    "and b.kafka_partition = c.kafka_partition and c.kafka_offset >= b.from_offset "
                    "and c.kafka_offset < b.to_offset)")
    def differs(new: str) -> str:
        return " or ".join(f"c.{col} is distinct from {new}.{col}" for col in VALUE_COLUMNS)

    # what the derived rows do to curated, counted by PostgreSQL
    cur.execute(q(
        f"select r.status, c.status, c.event_id is null, {in_run_range}, ({differs('r')}), count(*) "
        "from reprocess_rows r left join {schema}.sensor_readings c on c.event_id = r.event_id "
        "group by 1, 2, 3, 4, 5"),
        {"topic": topic})
    for new, old, missing, inside, changed, n in cur.fetchall():
        if missing:
            counts.added[new] += n
        elif not inside:
            counts.kept_outside_range += n
        elif old != new:
            counts.reclassified[f"{old}->{new}"] += n
        elif changed:
            counts.updated[new] += n
        else:
            counts.unchanged += n
    # rows of the chunk that derive no kept copy any more: they now fail a rule, or their event's
    # kept copy is another record
    cur.execute(q(
        "delete from {schema}.sensor_readings c where c.kafka_topic = %(topic)s and c.kafka_partition = %(p)s "
        "and c.kafka_offset >= %(lo)s and c.kafka_offset < %(hi)s "
        "and not exists (select 1 from reprocess_rows r where r.event_id = c.event_id) returning c.status"),
        {"topic": topic, "p": chunk.partition, "lo": chunk.from_offset, "hi": chunk.to_offset})
    counts.removed.update(status for (status,) in cur.fetchall())
    assignments = ", ".join(f"{col} = excluded.{col}" for col in VALUE_COLUMNS)
    cur.execute(q(
        f"insert into {{schema}}.sensor_readings as c ({columns}) select {columns} from reprocess_rows "
        f"on conflict (event_id) do update set {assignments} "
        f"where {in_run_range} and ({differs('excluded')})"),
        {"topic": topic})
    return counts


def chunk_csv(derived: DataFrame, chunk: Chunk) -> tuple[int, str]:
    """Return (records read, the curated rows' CSV text) of one chunk: the kept copies of its
    valid records, one line each. Spark joins the lines: one string crosses to Python, not a
    row object per record (which cost as much as the chunk's Spark work)."""
    from pyspark.sql import functions as F

    row = derived.where((F.col("partition") == chunk.partition) & (F.col("offset") >= chunk.from_offset)
                        & (F.col("offset") < chunk.to_offset)).agg(
        F.count("*").alias("records"), F.count("curated_csv").alias("curated"),
        F.concat_ws("\n", F.collect_list("curated_csv")).alias("text")).collect()[0]
    return row.records, row.text + "\n" if row.curated else ""


def run(spark: SparkSession, settings: ReprocessSettings) -> tuple[int | None, Counts]:
    """Reprocess; return (the run id, None for a dry run, and what changed)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    names = settings.names
    log_ = RunLog(settings)
    lock_conn = open_connection(settings.pg_connect, "iot-reprocess-lock", autocommit=True)
    try:
        with lock_conn.cursor() as cur:
            key = LOCK_KEY.format(db=settings.pg_connect.get("dbname"), schema=names.pg_schema)
            cur.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
            if not cur.fetchone()[0]:
                raise RuntimeError(f"another reprocess of schema {names.pg_schema} is running: one at a time")
        with connection(settings.pg_connect, "iot-reprocess") as conn, conn.cursor() as cur:
            resumed = None if settings.dry_run else log_.find_unfinished(cur)
            committed = committed_end_offsets(cur, names.pg_schema, query_name=names.query_name, topic=names.topic)
        if resumed:
            run_id, version, end_offsets = resumed
            # read exactly what the run began with: its bronze version, its offsets
            bronze, _ = read_bronze(spark, dataclasses.replace(settings, as_of=str(version)))
            log.info("resuming run %d: bronze version %d, offsets below %s", run_id, version, end_offsets)
        else:
            if not committed:
                raise NothingToReprocess(f"stream {names.query_name} has committed no batch of {names.topic} in "
                                         f"{names.pg_schema}.stream_health: nothing it read to reprocess")
            bronze, version = read_bronze(spark, settings)
            end_offsets = committed
        started = time.monotonic()
        records = in_range(bronze, settings, end_offsets)
        # One read of bronze: the derivation, kept for the chunks, also gives each partition's
        # offsets. Kept on local disk, not in the heap: in memory, a day-old pipeline's 2 million
        # records ran a 1 GB driver out of heap while the cache was built. Sorted by offset within
        # each cached partition, so a chunk's scan skips the batches whose offsets it does not
        # cover (the cache keeps each batch's min and max) instead of decoding them all.
        derived = derive(records, settings.thresholds).sortWithinPartitions("partition", "offset").persist(
            StorageLevel.DISK_ONLY)
        try:
            bounds = {r.partition: (r.lo, r.hi + 1) for r in derived.groupBy("partition").agg(
                F.min("offset").alias("lo"), F.max("offset").alias("hi")).collect()}
            if not bounds:
                raise NothingToReprocess(
                    f"no bronze records of {names.topic} from {settings.from_date or 'the first'} to "
                    f"{settings.to_date or 'the last'} Kafka date below the stream's committed offsets "
                    f"{end_offsets}: check --from, --to, --topic and --bronze-path")
            log.info("bronze version %d read and derived in %.1f s", version, time.monotonic() - started)
            chunks = plan_chunks(bounds, settings.chunk_rows)
            return _run_chunks(spark, settings, log_, records, derived, bounds, chunks, version, end_offsets,
                               resumed[0] if resumed else None, started)
        finally:
            derived.unpersist()
    finally:
        lock_conn.close()


def hand_quarantine_to_stream(spark: SparkSession, settings: ReprocessSettings, log_: RunLog, run_id: int,
                              records: DataFrame, bounds: dict[int, tuple[int, int]]) -> int:
    """Stage the range's quarantine rows under the current rules in a Delta table of this run's
    own, and ask the stream, the quarantine table's one writer, to MERGE them in between two
    micro-batches (jobs/maintenance.requarantine); return the request id. A resumed run that
    already asked does not ask again. Waits up to --quarantine-wait seconds for the outcome."""
    names = settings.names
    with connection(settings.pg_connect, "iot-reprocess") as conn, conn.cursor() as cur:
        cur.execute(log_.sql("select quarantine_request from {schema}.reprocess_runs where run_id = %s"), (run_id,))
        request_id = cur.fetchone()[0]
    staging = f"{names.quarantine_path.rstrip('/')}-reprocess-{run_id}"
    if request_id is None:
        quarantine(validate(parse(bronze_as_kafka(records)))).write.format("delta").mode("overwrite").partitionBy(
            "kafka_date").save(staging)
        params = {"run_id": run_id, "staging_path": staging, "topic": names.topic,
                  "bounds": {str(p): [lo, hi] for p, (lo, hi) in bounds.items()}}
        with connection(settings.pg_connect, "iot-reprocess") as conn, conn.cursor() as cur:
            cur.execute(log_.sql(
                "insert into {schema}.lake_maintenance (requested_by, query_name, kind, params) "
                "values (%s, %s, 'requarantine', %s) returning request_id"),
                (f"reprocess run {run_id}", names.query_name, json.dumps(params)))
            request_id = cur.fetchone()[0]
            cur.execute(log_.sql("update {schema}.reprocess_runs set quarantine_request = %s where run_id = %s"),
                        (request_id, run_id))
    log.info("quarantine decisions staged in %s; lake maintenance request %d asks stream %s to apply them",
             staging, request_id, names.query_name)
    deadline = time.monotonic() + settings.quarantine_wait_seconds
    while True:
        with connection(settings.pg_connect, "iot-reprocess") as conn:
            state, result, error = lake_maintenance_outcome(conn, names.pg_schema, request_id)
        if state == "done":
            log.info("the stream applied the quarantine decisions: %s", result)
            return request_id
        if state == "failed":
            raise RuntimeError(f"the stream could not apply the quarantine decisions (request {request_id}): {error}")
        if time.monotonic() >= deadline:
            log.warning("the stream has not applied the quarantine decisions after %d s: request %d stays pending, "
                        "and the stream applies it between two micro-batches once it runs "
                        "(lake_maintenance, marts.pipeline_health)", settings.quarantine_wait_seconds, request_id)
            return request_id
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _run_chunks(spark, settings: ReprocessSettings, log_: RunLog, records, derived, bounds, chunks: list[Chunk],
                version: int, end_offsets: dict[int, int], run_id: int | None,
                started: float) -> tuple[int | None, Counts]:
    total = Counts()
    done: set[int] = set()
    if not settings.dry_run:
        with connection(settings.pg_connect, "iot-reprocess") as conn, conn.cursor() as cur:
            if run_id is None:
                run_id = log_.start(cur, version, end_offsets, len(chunks))
            else:
                done, total = log_.done_chunks(cur, run_id)
    log.info("%s%s: bronze version %d, %d chunks (%d done), offsets below %s",
             "dry run" if settings.dry_run else f"run {run_id}", "" if not done else " (resumed)", version,
             len(chunks), len(done), end_offsets)
    todo = [c for c in chunks if c.number not in done]
    progress = _Progress(total=total, chunks=len(chunks), left=sum(c.to_offset - c.from_offset for c in todo),
                         started=started)
    # Spark's work overlaps PostgreSQL's: the quarantine comparison runs beside the chunks, and
    # two workers each take a Kafka partition's chunks in turn (the largest first), so one applies
    # a chunk in PostgreSQL while the other's lines are made by Spark, or both apply (one core each)
    pool = ThreadPoolExecutor(max_workers=1 + CHUNK_WORKERS, thread_name_prefix="reprocess")
    try:
        compared = pool.submit(_timed, quarantine_counts, spark, settings, derived, bounds)
        by_partition: dict[int, list[Chunk]] = {}
        for chunk in todo:
            by_partition.setdefault(chunk.partition, []).append(chunk)
        queue = sorted(by_partition.values(), key=lambda cs: -sum(c.to_offset - c.from_offset for c in cs))
        stop = threading.Event()
        workers = [pool.submit(_chunk_worker, settings, log_, run_id, derived, bounds, queue, progress, stop)
                   for _ in range(min(CHUNK_WORKERS, len(queue)))]
        wait(workers, return_when=FIRST_EXCEPTION)
        if any(w.done() and w.exception() for w in workers):
            stop.set()  # the others finish the chunk they are in, then stop
            wait(workers)
            raise next(w.exception() for w in workers if w.exception())
        read = progress.read
        t_wait = time.monotonic()
        quarantine, seconds = compared.result()
        log.info("quarantine decisions compared in %.1f s, alongside the chunks (waited %.1f s for it)",
                 seconds, time.monotonic() - t_wait)
        total.promoted, total.newly_quarantined = quarantine.promoted, quarantine.newly_quarantined
        total.reasons_changed = quarantine.reasons_changed
        if not settings.dry_run and quarantine.quarantine_differs:
            hand_quarantine_to_stream(spark, settings, log_, run_id, records, bounds)
    except BaseException as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        if run_id is not None and not isinstance(exc, KeyboardInterrupt):
            log_.finish(run_id, "failed", total, f"{type(exc).__name__}: {exc}")
        raise
    pool.shutdown()
    if run_id is not None:
        log_.finish(run_id, "done", total)
    elapsed = time.monotonic() - started
    log.info("%s done: %d rows read in %.1f s (%.0f rows/s, from the first read of bronze)",
             "dry run" if settings.dry_run else f"run {run_id}", read, elapsed, read / max(elapsed, 1e-3))
    return run_id, total


# chunks applied at once: PostgreSQL takes one core per connection, the machine has two
CHUNK_WORKERS = 2
# a chunk that deadlocks with another (their events' copies in each other's range) is retried
DEADLOCK_RETRIES = 3


@dataclass
class _Progress:
    """The chunk workers' shared totals, under one lock."""

    total: Counts
    chunks: int
    left: int
    started: float
    read: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # the ETA follows the chunks' own pace (the derivation before them is done)
    chunks_started: float = field(default_factory=time.monotonic)

    def chunk_applied(self, chunk: Chunk, rows: int, counts: Counts, spark_ms: int, pg_ms: int) -> None:
        with self.lock:
            self.total.add(counts)
            self.read += rows
            self.left -= chunk.to_offset - chunk.from_offset
            now = time.monotonic()
            pace = self.read / max(now - self.chunks_started, 1e-3)
            log.info("chunk %d/%d (partition %d, offsets %d-%d): %d rows (Spark %d ms, PostgreSQL %d ms), "
                     "%.0f rows/s since the first read of bronze, ETA %.0f s", chunk.number + 1, self.chunks,
                     chunk.partition, chunk.from_offset, chunk.to_offset - 1, rows, spark_ms, pg_ms,
                     self.read / max(now - self.started, 1e-3), self.left / pace if pace else 0)


def _chunk_worker(settings: ReprocessSettings, log_: RunLog, run_id: int | None, derived: DataFrame,
                  bounds: dict[int, tuple[int, int]], queue: list[list[Chunk]], progress: _Progress,
                  stop: threading.Event) -> None:
    """Apply whole Kafka partitions' chunks from `queue`, each chunk in one transaction, until
    the queue is empty or `stop` is set. Two workers never hold chunks of one partition."""
    import psycopg2.errors

    names = settings.names
    with connection(settings.pg_connect, "iot-reprocess") as conn:
        while not stop.is_set():
            with progress.lock:
                if not queue:
                    return
                partition_chunks = queue.pop(0)
            for chunk in partition_chunks:
                if stop.is_set():
                    return
                t_spark = time.monotonic()
                rows, csv_text = chunk_csv(derived, chunk)
                t_pg = time.monotonic()
                for attempt in range(1, DEADLOCK_RETRIES + 1):
                    try:
                        with conn.cursor() as cur:
                            counts = apply_chunk(cur, names.pg_schema, names.topic, chunk, csv_text, bounds)
                            if settings.dry_run:
                                conn.rollback()
                            else:
                                log_.chunk_done(cur, run_id, chunk, rows, counts)
                                conn.commit()
                        break
                    except psycopg2.errors.DeadlockDetected:
                        conn.rollback()
                        if attempt == DEADLOCK_RETRIES:
                            raise
                        log.warning("chunk %d deadlocked with another, attempt %d of %d: retrying", chunk.number + 1,
                                    attempt, DEADLOCK_RETRIES)
                progress.chunk_applied(chunk, rows, counts, int((t_pg - t_spark) * 1000),
                                       int((time.monotonic() - t_pg) * 1000))


def _timed(function, *args):
    """Return (function(*args), the seconds it took)."""
    t = time.monotonic()
    return function(*args), time.monotonic() - t


def optional_date(text: str) -> date | None:
    """A YYYY-MM-DD date, or None for an empty value."""
    return date.fromisoformat(text.strip()) if text.strip() else None


def true_or_false(text: str) -> bool:
    if text.strip().lower() in ("true", "1", "yes"):
        return True
    if text.strip().lower() in ("false", "0", "no", ""):
        return False
    raise ValueError(text)


def build_parser(pipeline: PipelineNames) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-submit jobs/reprocess.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    # an empty value counts as not given: the iot_reprocess DAG passes unset params as ""
    parser.add_argument("--from", dest="from_date", type=optional_date, metavar="DATE",
                        help="first Kafka date, YYYY-MM-DD (default: bronze's first)")
    parser.add_argument("--to", dest="to_date", type=optional_date, metavar="DATE",
                        help="last Kafka date, inclusive (default: bronze's last)")
    parser.add_argument("--as-of", metavar="VERSION|TIMESTAMP", type=lambda text: text.strip() or None,
                        help="read bronze as of a Delta version (a number) or a timestamp, e.g. "
                             "2026-11-30T12:00:00Z (time travel; default: its latest version)")
    parser.add_argument("--dry-run", nargs="?", const="true", default="false", type=true_or_false,
                        metavar="true|false", help="print what would change, write nothing")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help=f"records per chunk, one transaction each (default {DEFAULT_CHUNK_ROWS})")
    parser.add_argument("--quarantine-wait", type=int, default=600, metavar="SECONDS",
                        help="how long to wait for the stream to apply the quarantine decisions (default 600)")
    parser.add_argument("--requested-by", default="spark-submit", help=argparse.SUPPRESS)
    names = parser.add_argument_group("names", "The pipeline's names, as jobs/stream.py takes them (default: .env's)")
    names.add_argument("--topic", help=f"Kafka topic (pipeline's: {pipeline.topic})")
    names.add_argument("--bronze-path", help=f"bronze Delta table (pipeline's: {pipeline.bronze_path})")
    names.add_argument("--quarantine-path", help=f"quarantine Delta table (pipeline's: {pipeline.quarantine_path})")
    names.add_argument("--pg-schema", help=f"PostgreSQL schema (pipeline's: {pipeline.pg_schema})")
    names.add_argument("--query-name", help=f"the stream whose committed offsets bound the run "
                                            f"(pipeline's: {pipeline.query_name})")
    parser.add_argument("--master", default=None, help="Spark master when run with plain python")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, env: Env) -> ReprocessSettings:
    """Settings from the command line; a bad argument exits 2 through `parser`, naming it."""
    if not 1 <= args.chunk_rows <= MAX_CHUNK_ROWS:
        parser.error(f"--chunk-rows must be between 1 and {MAX_CHUNK_ROWS:,}: a chunk's lines are held in the "
                     f"driver's memory, {CHUNK_WORKERS} chunks at a time")
    if args.quarantine_wait < 0:
        parser.error("--quarantine-wait must be >= 0")
    if args.from_date and args.to_date and args.from_date > args.to_date:
        parser.error(f"--from {args.from_date} is after --to {args.to_date}")
    given = [option for key, option in REPROCESS_NAME_OPTIONS.items() if (getattr(args, key) or "").strip()]
    if given and len(given) < len(REPROCESS_NAME_OPTIONS):
        missing = [option for option in REPROCESS_NAME_OPTIONS.values() if option not in given]
        parser.error(f"names of your own are all or nothing: {', '.join(given)} given, but not {', '.join(missing)}. "
                     "Falling back to the pipeline's value for those would rebuild one pipeline's curated rows "
                     "from another's bronze.")
    names = PipelineNames.from_env(env).with_params(vars(args))
    return ReprocessSettings(names=names, pg_connect=pg_connect_kwargs(env), thresholds=Thresholds.from_env(env),
                             from_date=args.from_date, to_date=args.to_date, as_of=args.as_of,
                             dry_run=args.dry_run, chunk_rows=args.chunk_rows, requested_by=args.requested_by,
                             quarantine_wait_seconds=args.quarantine_wait)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    env = Env()
    parser = build_parser(PipelineNames.from_env(env))
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args, env)

    from jobs.session import build_spark

    spark = build_spark(f"iot-reprocess-{settings.names.query_name}", env, master=args.master)
    try:
        run_id, counts = run(spark, settings)
    except NothingToReprocess as exc:
        log.error("%s. Nothing was changed.", exc)
        return 1
    finally:
        spark.stop()
    what = "would change (dry run, nothing written)" if settings.dry_run else f"changed (run {run_id})"
    print(f"reprocess of {settings.names.pg_schema}.sensor_readings from {settings.names.bronze_path} {what}:\n"
          f"{counts.report()}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
