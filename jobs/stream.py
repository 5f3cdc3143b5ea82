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
from typing import TYPE_CHECKING

from common.env import Env
from common.kafka import STREAM_GROUP_PREFIX, KafkaLogin
from common.pipeline import PipelineNames
from jobs.maintenance import LakeMaintenance, WriterLock, writer_resources
from jobs.micro_batch import BatchProcessor
from jobs.session import pg_connect_kwargs
from jobs.sinks import DeltaSink, PostgresSink
from jobs.spark_conf import delta_log_retention
from jobs.transform import Thresholds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("jobs.stream")
KAFKA_FETCH_MAX_WAIT_MS = 1  # see kafka_source

@dataclass(frozen=True)
class StreamSettings:
    """Everything the streaming job needs, from the environment and the command line."""

    kafka: KafkaLogin  # the stream's principal: reads the topic (and the lag reader's offsets)
    names: PipelineNames  # topic, checkpoint, the two tables, schema, query name
    pg_connect: dict
    trigger_seconds: float
    max_offsets_per_trigger: int
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
        return cls(
            kafka=KafkaLogin.from_env(env, "stream"),
            names=PipelineNames.from_env(env),
            pg_connect=pg_connect_kwargs(env),
            trigger_seconds=env.get_float("STREAM_TRIGGER_SECONDS", 5.0),
            max_offsets_per_trigger=env.get_int("STREAM_MAX_OFFSETS_PER_TRIGGER", 50_000),
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
            .option("groupIdPrefix", f"{STREAM_GROUP_PREFIX}-{settings.names.query_name}")
            .option("subscribe", settings.names.topic)
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
        settings.names, settings.thresholds,
        bronze=DeltaSink(settings.names.bronze_path, properties=dict(settings.table_properties)),
        quarantine_sink=DeltaSink(settings.names.quarantine_path, properties=dict(settings.table_properties)),
        postgres=PostgresSink(settings.pg_connect, settings.names.pg_schema),
        latest_offsets=LatestOffsets(settings.kafka, settings.names.topic),
        log_summary_seconds=settings.log_summary_seconds,
    )


def stream_resources(settings: StreamSettings) -> dict[str, str]:
    """Return the lock keys the stream must hold alone (see jobs/maintenance.writer_resources)."""
    tables = {"bronze": settings.names.bronze_path, "quarantine": settings.names.quarantine_path}
    return writer_resources(settings.names.checkpoint, tables, settings.pg_connect["dbname"], settings.names.pg_schema)


def run(spark: SparkSession, settings: StreamSettings, trigger: dict, stop_event: threading.Event) -> int:
    """Run the query until it ends, fails, or `stop_event` is set; return the exit status."""
    lock = WriterLock(settings.pg_connect, stream_resources(settings), settings.lock_timeout_seconds,
                      application_name=f"iot-stream-lock {settings.names.query_name}"[:63])
    lock.acquire()
    try:
        return _run_locked(spark, settings, trigger, stop_event)
    finally:
        lock.release()


def _run_locked(spark: SparkSession, settings: StreamSettings, trigger: dict, stop_event: threading.Event) -> int:
    maintenance = LakeMaintenance(settings.pg_connect, settings.names.pg_schema, settings.names.query_name,
                                  {"bronze": settings.names.bronze_path, "quarantine": settings.names.quarantine_path},
                                  settings.maintenance_poll_seconds, settings.maintenance_max_attempts)
    requeued, failed = maintenance.reset_interrupted()
    if requeued:
        log.warning("%d lake maintenance request(s) interrupted by the previous driver: pending again", requeued)
    if failed:
        log.error("%d lake maintenance request(s) interrupted %d times by a dying driver: marked failed, not "
                  "retried (see lake_maintenance.error and marts.pipeline_health)", failed, maintenance.max_attempts)
    processor = build_processor(settings)
    query = build_query(kafka_source(spark, settings), processor, trigger, settings.names.checkpoint,
                        settings.names.query_name)
    names = settings.names
    log.info("query %s (id %s) started: %s -> bronze %s, quarantine %s, postgres schema %s; checkpoint %s",
             names.query_name, query.id, names.topic, names.bronze_path, names.quarantine_path, names.pg_schema,
             names.checkpoint)
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


def build_parser(settings: StreamSettings) -> argparse.ArgumentParser:
    """The job's command line; the pipeline's own settings are the defaults it shows."""
    pipeline = settings.names
    parser = argparse.ArgumentParser(
        prog="spark-submit jobs/stream.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--available-now", action="store_true",
                        help="process everything available now, then exit (default: run forever)")
    parser.add_argument("--trigger-seconds", type=float, default=settings.trigger_seconds,
                        help="micro-batch interval (default STREAM_TRIGGER_SECONDS or 5)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=settings.max_offsets_per_trigger,
                        help="upper bound of records per micro-batch (default STREAM_MAX_OFFSETS_PER_TRIGGER or 50000)")
    names = parser.add_argument_group(
        "names", "The stream's names. Give all six (a stream of your own) or none (the pipeline's own, from "
                 ".env): a run with some is refused. Each Delta table, checkpoint and PostgreSQL schema has one "
                 "writer at a time; a second one waits STREAM_LOCK_TIMEOUT_SECONDS, then is refused.")
    names.add_argument("--topic", help=f"Kafka topic (pipeline's: {pipeline.topic})")
    names.add_argument("--checkpoint", help=f"checkpoint location, durable (pipeline's: {pipeline.checkpoint})")
    names.add_argument("--bronze-path", help=f"bronze Delta table (pipeline's: {pipeline.bronze_path})")
    names.add_argument("--quarantine-path", help=f"quarantine Delta table (pipeline's: {pipeline.quarantine_path})")
    names.add_argument("--pg-schema", help="PostgreSQL schema of the curated, progress and health tables "
                                           f"(pipeline's: {pipeline.pg_schema})")
    names.add_argument("--query-name", help=f"streaming query name (pipeline's: {pipeline.query_name})")
    parser.add_argument("--master", default=None, help="Spark master when run with plain python (spark-submit sets it)")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       settings: StreamSettings) -> StreamSettings:
    """`settings` with the command line's; a bad argument exits 2 through `parser`, naming it."""
    if args.trigger_seconds <= 0:
        parser.error("--trigger-seconds must be > 0")
    if args.max_offsets_per_trigger < 1:
        parser.error("--max-offsets-per-trigger must be >= 1")
    try:
        settings = replace(settings, names=settings.names.own(vars(args)), trigger_seconds=args.trigger_seconds,
                           max_offsets_per_trigger=args.max_offsets_per_trigger)
        stream_resources(settings)  # refuses overlapping locations before Spark starts
    except ValueError as exc:
        parser.error(str(exc))
    return settings


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
    settings = StreamSettings.from_env(env)  # the pipeline's own stream, which the options override
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args, settings)

    from jobs.session import build_spark

    spark = build_spark(f"iot-stream-{settings.names.query_name}", env, master=args.master)
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
