"""The streaming job: Kafka -> bronze Delta, quarantine Delta, curated PostgreSQL, exactly once.

Usage (ad hoc; `make up` writes spark-defaults.conf with the jars and settings):

    stack/bin/stackctl spark-submit jobs/stream.py      # SPARK_CONF_DIR: `make up`'s (make status)
    stack/bin/stackctl spark-submit jobs/stream.py --available-now   # drain, then exit
    spark-submit jobs/stream.py --help

Configuration comes from the environment / .env (see .env.example, STREAM_* and STATUS_*),
overridable by the options below. Each micro-batch:
  1. parses and validates every record (jobs/rules.py) and classifies the valid ones;
  2. in one PostgreSQL transaction: valid rows via COPY into a staging table and
     INSERT ... ON CONFLICT (event_id) DO NOTHING, a progress row and a health row;
  3. appends every record, raw, to bronze; 4. appends invalid records with their failed rules
     to quarantine. Each sink is idempotent per (query id, batch id): see jobs/sinks.py.
A failure anywhere fails the query; restarted, it replays the batch from its checkpoint.
SIGTERM/SIGINT stop cleanly: the running micro-batch completes, then the query stops.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from common.env import Env
from common.kafka import STREAM_GROUP_PREFIX, KafkaLogin
from jobs.maintenance import LakeMaintenance, WriterLock, writer_resources
from jobs.session import pg_connect_kwargs
from jobs.sinks import DeltaSink, PostgresSink, batch_summary_columns
from jobs.spark_conf import delta_log_retention
from jobs.transform import Thresholds, parse, quarantine, summarize, to_bronze, validate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("jobs.stream")
QUERY_ID_PROPERTY = "sql.streaming.queryId"
KAFKA_FETCH_MAX_WAIT_MS = 1  # see kafka_source

# The names that make a stream the pipeline's or one of your own, and their options. A run
# gives all of them or none: with some, it would fall back to the pipeline's value for the
# rest and become a second writer of the pipeline's tables, schema or maintenance requests.
NAME_OPTIONS = {
    "topic": "--topic",
    "checkpoint": "--checkpoint",
    "bronze_path": "--bronze-path",
    "quarantine_path": "--quarantine-path",
    "pg_schema": "--pg-schema",
    "query_name": "--query-name",
}


def own_names(given: dict[str, str | None]) -> dict[str, str]:
    """Return the stream's names given on the command line: all of NAME_OPTIONS, or none (an
    empty value counts as not given: Airflow passes unset params as ""). Raise ValueError
    naming the missing options when only some are given."""
    names = {k: v.strip() for k, v in given.items() if k in NAME_OPTIONS and v and v.strip()}
    if names and len(names) < len(NAME_OPTIONS):
        missing = [option for key, option in NAME_OPTIONS.items() if key not in names]
        present = [option for key, option in NAME_OPTIONS.items() if key in names]
        raise ValueError(
            f"names of your own are all or nothing: {', '.join(present)} given, but not {', '.join(missing)}. "
            "Falling back to the pipeline's value for those would make this run a second writer of the "
            "pipeline's tables. Give every one of " + ", ".join(NAME_OPTIONS.values())
            + ", or none to run the pipeline's own stream.")
    return names


@dataclass(frozen=True)
class StreamSettings:
    """Everything the streaming job needs, from the environment and the command line."""

    kafka: KafkaLogin  # the stream's principal: reads the topic (and the lag reader's offsets)
    topic: str
    checkpoint: str
    bronze_path: str
    quarantine_path: str
    pg_schema: str
    pg_connect: dict
    trigger_seconds: float
    max_offsets_per_trigger: int
    query_name: str
    thresholds: Thresholds
    log_summary_seconds: float = 300.0
    table_properties: tuple[tuple[str, str], ...] = ()
    lock_timeout_seconds: int = 600
    maintenance_poll_seconds: float = 10.0
    maintenance_max_attempts: int = 3
    starting_offsets: str = "earliest"

    @classmethod
    def from_env(cls, env: Env) -> StreamSettings:
        """Return the settings of the pipeline's own stream (the running pipeline's names)."""
        bucket = env.get("LAKEHOUSE_BUCKET", "lakehouse")
        return cls(
            kafka=KafkaLogin.from_env(env, "stream"),
            topic=env.get("KAFKA_TOPIC", "iot.sensor-readings"),
            checkpoint=env.get("STREAM_CHECKPOINT", f"s3a://{bucket}/checkpoints/sensor_readings"),
            bronze_path=env.get("BRONZE_PATH", f"s3a://{bucket}/bronze/sensor_readings"),
            quarantine_path=env.get("QUARANTINE_PATH", f"s3a://{bucket}/quarantine/sensor_readings"),
            pg_schema=env.get("PIPELINE_SCHEMA", "iot"),
            pg_connect=pg_connect_kwargs(env),
            trigger_seconds=env.get_float("STREAM_TRIGGER_SECONDS", 5.0),
            max_offsets_per_trigger=env.get_int("STREAM_MAX_OFFSETS_PER_TRIGGER", 50_000),
            query_name=env.get("STREAM_QUERY_NAME", "sensor_readings"),
            thresholds=Thresholds.from_env(env),
            log_summary_seconds=env.get_float("STREAM_LOG_SUMMARY_SECONDS", 300.0),
            table_properties=(("delta.logRetentionDuration", delta_log_retention(env)),),
            lock_timeout_seconds=env.get_int("STREAM_LOCK_TIMEOUT_SECONDS", 600),
            maintenance_poll_seconds=env.get_float("STREAM_MAINTENANCE_POLL_SECONDS", 10.0),
            maintenance_max_attempts=env.get_int("STREAM_MAINTENANCE_MAX_ATTEMPTS", 3),
        )


def kafka_source(spark: SparkSession, settings: StreamSettings) -> DataFrame:
    """Return the streaming Kafka source: earliest offsets on first start, bounded batches."""
    return (spark.readStream.format("kafka")
            .options(**settings.kafka.spark_options())
            # the stream principal may use the consumer groups of this prefix, and no other
            .option("groupIdPrefix", f"{STREAM_GROUP_PREFIX}-{settings.query_name}")
            .option("subscribe", settings.topic)
            # How long the broker may hold a fetch that finds no new records (Kafka's default:
            # 500 ms). Each task's consumer polls, then asks for the partition's earliest and
            # latest offsets; meanwhile the consumer has already sent its next fetch, from the end
            # of the partition, and the broker answers a connection's requests in order: each
            # task waited for that idle fetch, until new records arrived or 500 ms passed
            # (100-150 ms a task, 3 waves of tasks a batch on 2 cores). A fetch that finds
            # records returns at once whatever this says, so catch-up reads are unchanged.
            .option("kafka.fetch.max.wait.ms", str(KAFKA_FETCH_MAX_WAIT_MS))
            .option("startingOffsets", settings.starting_offsets)
            .option("maxOffsetsPerTrigger", settings.max_offsets_per_trigger)
            # Records deleted by retention before we read them must fail the job loudly.
            .option("failOnDataLoss", "true")
            .load())


class LatestOffsets:
    """Reads the topic's latest offsets, for the health row's offsets_behind."""

    def __init__(self, login: KafkaLogin, topic: str) -> None:
        self.login = login
        self.topic = topic
        self._consumer = None

    def __call__(self) -> dict[int, int]:
        """Return {partition: latest offset}."""
        from kafka import KafkaConsumer, TopicPartition

        if self._consumer is None:
            self._consumer = KafkaConsumer(**self.login.client_kwargs(), client_id="iot-stream-lag",
                                           request_timeout_ms=10_000)
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        ends = self._consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}


@dataclass
class BatchLog:
    """What the log says about micro-batches: every figure of every batch is in the health rows
    (stream_health), so the log, which for the Airflow-supervised stream is one task log that
    grows as long as the driver lives, gets one summary line per `every_s` seconds and a line
    for each batch worth a look (the first, a replay, a slow one). Its growth is then bounded
    by the time it runs, not by the number of batches: about 100 bytes a minute at the
    default 300 s. `every_s` 0 logs every batch."""

    every_s: float = 300.0
    slow_s: float = 10.0
    clock: object = time.monotonic
    batches: int = 0
    rows_in: int = 0
    valid: int = 0
    quarantined: int = 0
    inserted: int = 0
    duplicates: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0
    behind: int = 0
    logged_any: bool = False
    since: float | None = None

    def __post_init__(self) -> None:
        self.since = self.clock()  # the first summary covers the driver's first `every_s`

    def add(self, rows_in: int, valid: int, quarantined: int, inserted: int, duplicates: int, behind: int,
            seconds: float, replay: bool) -> tuple[bool, str | None]:
        """Count one batch; return (whether the batch's own line is worth logging at INFO, the
        summary line when one is due)."""
        now = self.clock()
        self.batches += 1
        self.rows_in += rows_in
        self.valid += valid
        self.quarantined += quarantined
        self.inserted += inserted
        self.duplicates += duplicates
        self.seconds += seconds
        self.slowest_s = max(self.slowest_s, seconds)
        self.behind = behind
        notable = not self.every_s or not self.logged_any or replay or seconds >= self.slow_s
        self.logged_any = True
        if not self.every_s or now - self.since < self.every_s:
            return notable, None
        summary = (f"last {now - self.since:.0f} s: {self.batches} batches, in={self.rows_in} valid={self.valid} "
                   f"quarantined={self.quarantined} inserted={self.inserted} duplicates={self.duplicates}, "
                   f"mean {self.seconds / self.batches:.2f} s, slowest {self.slowest_s:.2f} s, behind={behind} "
                   "(each batch: stream_health)")
        self.batches = self.rows_in = self.valid = self.quarantined = self.inserted = self.duplicates = 0
        self.seconds = self.slowest_s = 0.0
        self.since = now
        return notable, summary


class StopRequested(RuntimeError):
    """Raised by a micro-batch that starts after a stop was requested (it is not committed)."""


class BatchProcessor:
    """The foreachBatch function: bronze, quarantine, PostgreSQL, health for one micro-batch."""

    def __init__(self, settings: StreamSettings, bronze: DeltaSink, quarantine_sink: DeltaSink,
                 postgres: PostgresSink, latest_offsets) -> None:
        self.settings = settings
        self.bronze = bronze
        self.quarantine = quarantine_sink
        self.postgres = postgres
        self.latest_offsets = latest_offsets
        self.lock = threading.Lock()
        self.stopping = False
        self.end_offsets: dict[int, int] | None = None
        self.batches = 0
        self.last_batch_id = -1  # the last batch this process wrote to every sink
        self.batch_log = BatchLog(every_s=settings.log_summary_seconds)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        """Process one micro-batch; raise on any failure (the batch is then not committed)."""
        with self.lock:
            if self.stopping:
                raise StopRequested(f"stop requested before batch {batch_id}")
            self._process(batch, batch_id)

    @staticmethod
    def _timed(write, rows: DataFrame, query_id: str, batch_id: int) -> int:
        """Write `rows` with `write`; return how long it took in ms."""
        t = time.monotonic()
        write(rows, query_id, batch_id)
        return int((time.monotonic() - t) * 1000)

    def _process(self, batch: DataFrame, batch_id: int) -> None:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        spark = batch.sparkSession
        query_id = spark.sparkContext.getLocalProperty(QUERY_ID_PROPERTY)
        if not query_id:
            raise RuntimeError(f"no {QUERY_ID_PROPERTY} local property: not running inside a streaming query")
        if self.end_offsets is None:
            self.end_offsets = self.postgres.committed_end_offsets(query_id)
        batch.persist()
        checked = validate(parse(batch)).persist()
        try:
            # one Spark job: every record's coordinates, failed rules and, if valid, its CSV row
            stats, valid = summarize(checked.select(*batch_summary_columns(self.settings.thresholds)).collect())
            rows_in, quarantined, failures = stats.rows, stats.quarantined, stats.rule_failures
            lines = [row[3] for row in valid]
            end_offsets = {**self.end_offsets, **stats.next_offsets}
            latest = self.latest_offsets()
            behind = sum(max(0, latest[p] - end_offsets.get(p, 0)) for p in latest)
            validate_ms = int((time.monotonic() - t0) * 1000)

            # 1. PostgreSQL first: the rows are visible as soon as possible. All three sinks
            #    are idempotent per batch, so their order does not affect exactly-once.
            result = self.postgres.write_batch(query_id, batch_id, lines, {
                "query_name": self.settings.query_name, "topic": self.settings.topic, "started_at": started,
                "rows_in": rows_in, "rows_valid": len(lines),
                "rows_quarantined": quarantined, "rule_failures": {k: v for k, v in failures.items() if v},
                "validate_ms": validate_ms, "postgres_started_at": datetime.now(UTC),
                "end_offsets": {str(p): o for p, o in end_offsets.items()}, "offsets_behind": behind,
            })
            # 2. bronze (every record as received) and 3. quarantine (invalid records and their
            #    failed rules), side by side: two tables, one writer each. Most of a Delta
            #    write is waiting (the job's scheduling, the object store), not CPU.
            def write_quarantine() -> int:
                return self._timed(self.quarantine.write, quarantine(checked), query_id, batch_id)

            beside = Beside(write_quarantine) if quarantined else None  # no thread for nothing to write
            try:
                bronze_ms = self._timed(self.bronze.write, to_bronze(batch), query_id, batch_id) if rows_in else 0
            except BaseException:
                if beside:
                    beside.wait_after_failure()  # the batch's frames stay cached until it is done
                raise
            quarantine_ms = beside.result() if beside else 0
            if result.committed:
                self.postgres.record_lake_timings(query_id, batch_id, bronze_ms, quarantine_ms, started)
        finally:
            checked.unpersist()
            batch.unpersist()
        self.end_offsets = end_offsets
        self.batches += 1
        self.last_batch_id = batch_id
        seconds = time.monotonic() - t0
        notable, summary = self.batch_log.add(rows_in, len(lines), quarantined, result.inserted, result.duplicates,
                                              behind, seconds, replay=not result.committed)
        log.log(logging.INFO if notable else logging.DEBUG,
                "batch %d: in=%d valid=%d quarantined=%d inserted=%d duplicates=%d behind=%d %s in %.2fs "
                "(validate %d ms, bronze %d ms, quarantine %d ms)",
                batch_id, rows_in, len(lines), quarantined, result.inserted, result.duplicates, behind,
                "committed" if result.committed else "already committed (replay)", seconds,
                validate_ms, bronze_ms, quarantine_ms)
        if summary:
            log.info("%s", summary)


class Beside:
    """Runs `work` in a thread of its own that carries this thread's Spark job properties
    (pyspark's InheritableThread: the stream's query id and job group); `result()` waits for
    it and returns its value or raises its exception."""

    def __init__(self, work) -> None:
        from pyspark import InheritableThread

        self._value = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = work()
            except BaseException as e:  # handed to result(), which raises it in the caller
                self._error = e

        self._thread = InheritableThread(target=run, name="quarantine-writer", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait_after_failure(self) -> None:
        """Wait for the work while the caller's own failure propagates; log the work's, if any
        (it is not raised: the caller's is)."""
        self._thread.join()
        if self._error is not None:
            log.error("the work beside it failed too", exc_info=self._error)


def build_query(source: DataFrame, processor: BatchProcessor, trigger: dict, checkpoint: str,
                query_name: str) -> StreamingQuery:
    """Start and return the streaming query of `source` into `processor`.

    `trigger` is DataStreamWriter.trigger's keywords: {"processingTime": "1 second"} for the
    long-running job, {"availableNow": True} to drain what is there and stop (tests, backfills).
    """
    return (source.writeStream.queryName(query_name)
            .option("checkpointLocation", checkpoint)
            .foreachBatch(processor)
            .trigger(**trigger)
            .start())


def last_committed_batch(query: StreamingQuery) -> int:
    """Return the id of the query's last batch recorded as done (its progress follows its commit)."""
    progress = query.lastProgress
    if progress is None:
        return -1
    batch_id = getattr(progress, "batchId", None)
    return int(batch_id if batch_id is not None else progress["batchId"])


def wait_for_checkpoint_commit(query: StreamingQuery, batch_id: int, timeout_s: float) -> None:
    """Wait until the query has recorded `batch_id` as committed, or is no longer active."""
    deadline = time.monotonic() + timeout_s
    while query.isActive and last_committed_batch(query) < batch_id:
        if time.monotonic() > deadline:
            log.warning("batch %d not recorded as committed after %.0f s; stopping anyway (it is replayed, "
                        "idempotently, on the next start)", batch_id, timeout_s)
            return
        query.awaitTermination(0.2)


def poll_maintenance(maintenance: LakeMaintenance, processor: BatchProcessor, spark: SparkSession) -> None:
    """Carry out pending lake maintenance between two micro-batches (this driver is the only
    writer of its tables). PostgreSQL being unreachable is not this loop's to report: the
    next micro-batch fails the query on it; the poll is retried later."""
    import psycopg2

    with processor.lock:
        try:
            maintenance.run_pending(spark)
        except psycopg2.OperationalError as exc:
            log.warning("lake maintenance poll: PostgreSQL unreachable (%s); retrying in %.0f s",
                        str(exc).strip(), maintenance.poll_seconds)


def build_processor(settings: StreamSettings) -> BatchProcessor:
    """Return the batch processor wired to the real sinks."""
    return BatchProcessor(
        settings,
        bronze=DeltaSink(settings.bronze_path, properties=dict(settings.table_properties)),
        quarantine_sink=DeltaSink(settings.quarantine_path, properties=dict(settings.table_properties)),
        postgres=PostgresSink(settings.pg_connect, settings.pg_schema),
        latest_offsets=LatestOffsets(settings.kafka, settings.topic),
    )


def stream_resources(settings: StreamSettings) -> dict[str, str]:
    """Return the lock keys the stream must hold alone (see jobs/maintenance.writer_resources)."""
    tables = {"bronze": settings.bronze_path, "quarantine": settings.quarantine_path}
    return writer_resources(settings.checkpoint, tables, settings.pg_connect["dbname"], settings.pg_schema)


def run(spark: SparkSession, settings: StreamSettings, trigger: dict, stop_event: threading.Event) -> int:
    """Run the query until it ends, fails, or `stop_event` is set; return the exit status."""
    lock = WriterLock(settings.pg_connect, stream_resources(settings), settings.lock_timeout_seconds,
                      application_name=f"iot-stream-lock {settings.query_name}"[:63])
    lock.acquire()
    try:
        return _run_locked(spark, settings, trigger, stop_event)
    finally:
        lock.release()


def _run_locked(spark: SparkSession, settings: StreamSettings, trigger: dict, stop_event: threading.Event) -> int:
    maintenance = LakeMaintenance(settings.pg_connect, settings.pg_schema, settings.query_name,
                                  {"bronze": settings.bronze_path, "quarantine": settings.quarantine_path},
                                  settings.maintenance_poll_seconds, settings.maintenance_max_attempts)
    requeued, failed = maintenance.reset_interrupted()
    if requeued:
        log.warning("%d lake maintenance request(s) interrupted by the previous driver: pending again", requeued)
    if failed:
        log.error("%d lake maintenance request(s) interrupted %d times by a dying driver: marked failed, not "
                  "retried (see lake_maintenance.error and marts.pipeline_health)", failed, maintenance.max_attempts)
    processor = build_processor(settings)
    query = build_query(kafka_source(spark, settings), processor, trigger, settings.checkpoint,
                        settings.query_name)
    log.info("query %s (id %s) started: %s -> bronze %s, quarantine %s, postgres schema %s; checkpoint %s",
             settings.query_name, query.id, settings.topic, settings.bronze_path, settings.quarantine_path,
             settings.pg_schema, settings.checkpoint)
    from pyspark.errors import StreamingQueryException

    try:
        try:
            while query.isActive and not stop_event.is_set():
                query.awaitTermination(1)
                if maintenance.due() and not stop_event.is_set():
                    poll_maintenance(maintenance, processor, spark)
        except StreamingQueryException as exc:
            # A sink error failed a micro-batch: it is not committed, and the restarted job
            # replays it from the checkpoint. Say so clearly and exit non-zero.
            log.error("query failed: %s", exc.getMessage() if hasattr(exc, "getMessage") else exc)
            return 1
        if stop_event.is_set() and query.isActive:
            log.info("stop requested: letting the running micro-batch finish")
            with processor.lock:  # waits for a batch in progress to complete its writes
                processor.stopping = True
            # Spark writes the batch's commit to the checkpoint after our function returns;
            # stopping before that would leave a batch written to every sink but not committed.
            wait_for_checkpoint_commit(query, processor.last_batch_id, timeout_s=120)
            query.stop()
            log.info("stopped cleanly after %d batches (last committed batch %d)", processor.batches,
                     processor.last_batch_id)
            return 0
        exc = query.exception()
        if exc is not None:
            log.error("query failed: %s", exc)
            return 1
        log.info("query finished after %d batches", processor.batches)
        return 0
    finally:
        processor.postgres.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the SparkSession, run the stream; return the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python warns "Exchanging credentials in the clear" for every SASL login; SCRAM never
    # sends the password, only a proof of it
    logging.getLogger("kafka.net.sasl").setLevel(logging.ERROR)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    env = Env()
    defaults = StreamSettings.from_env(env)
    parser = argparse.ArgumentParser(
        prog="spark-submit jobs/stream.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--available-now", action="store_true",
                        help="process everything available now, then exit (default: run forever)")
    parser.add_argument("--trigger-seconds", type=float, default=defaults.trigger_seconds,
                        help="micro-batch interval (default STREAM_TRIGGER_SECONDS or 5)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=defaults.max_offsets_per_trigger,
                        help="upper bound of records per micro-batch (default STREAM_MAX_OFFSETS_PER_TRIGGER or 50000)")
    names = parser.add_argument_group(
        "names", "The stream's names. Give all six (a stream of your own) or none (the pipeline's own, from "
                 ".env): a run with some is refused. Each Delta table, checkpoint and PostgreSQL schema has one "
                 "writer at a time; a second one waits STREAM_LOCK_TIMEOUT_SECONDS, then is refused.")
    names.add_argument("--topic", help=f"Kafka topic (pipeline's: {defaults.topic})")
    names.add_argument("--checkpoint", help=f"checkpoint location, durable (pipeline's: {defaults.checkpoint})")
    names.add_argument("--bronze-path", help=f"bronze Delta table (pipeline's: {defaults.bronze_path})")
    names.add_argument("--quarantine-path", help=f"quarantine Delta table (pipeline's: {defaults.quarantine_path})")
    names.add_argument("--pg-schema", help="PostgreSQL schema of the curated, progress and health tables "
                                           f"(pipeline's: {defaults.pg_schema})")
    names.add_argument("--query-name", help=f"streaming query name (pipeline's: {defaults.query_name})")
    parser.add_argument("--master", default=None, help="Spark master when run with plain python (spark-submit sets it)")
    args = parser.parse_args(argv)
    if args.trigger_seconds <= 0:
        parser.error("--trigger-seconds must be > 0")
    if args.max_offsets_per_trigger < 1:
        parser.error("--max-offsets-per-trigger must be >= 1")
    try:
        settings = replace(defaults, **own_names(vars(args)), trigger_seconds=args.trigger_seconds,
                           max_offsets_per_trigger=args.max_offsets_per_trigger)
        stream_resources(settings)  # refuses overlapping locations before Spark starts
    except ValueError as exc:
        parser.error(str(exc))

    from jobs.session import build_spark

    spark = build_spark(f"iot-stream-{settings.query_name}", env, master=args.master)
    stop_event = threading.Event()

    def request_stop(signum, _frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    trigger = ({"availableNow": True} if args.available_now
               else {"processingTime": f"{settings.trigger_seconds} seconds"})
    try:
        return run(spark, settings, trigger, stop_event)
    except TimeoutError as exc:
        log.error("%s", exc)
        return 1
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
