"""Helpers for the streaming job's integration tests: a pipeline of the test's own (topic,
PostgreSQL schema, S3 prefix), the real job run with spark-submit, and the expectations
derived from what the producer sent."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import boto3
from botocore.client import Config
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from common.env import REPO_ROOT, Env
from common.jvm import stream_driver_java_options
from common.pipeline import NAME_OPTIONS
from common.postgres import open_connection
from producer.bad_events import BAD_CATEGORIES
from producer.simulation import AnomalyRates, Fleet
from producer.stream import VALID, EventStream
from stack.init import mc_root_env
from stack.settings import StackSettings
from testkit.own_services import OwnBroker, OwnObjectStore
from testkit.schemas import create_pipeline_schema, drop_pipeline_schema

REPO = REPO_ROOT


@dataclass
class Pipeline:
    """Names of one test's own pipeline, and how to run the real job on them."""

    stack: StackSettings
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    partitions: int = 3
    topic_configs: dict = field(default_factory=dict)
    master: str = "local[2]"  # or a standalone cluster's spark://127.0.0.1:7077
    # an object store or a broker of the test's own (testkit.own_services) instead of the stack's
    store: OwnObjectStore | None = None
    broker: OwnBroker | None = None

    @property
    def kafka(self) -> StackSettings:
        """The settings whose broker holds the topic: the stack's, or its own broker's."""
        return self.broker.settings if self.broker else self.stack

    def env(self) -> dict[str, str]:
        """The environment of the job's driver: this process's, on the pipeline's broker."""
        return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.kafka.kafka_bootstrap}

    @property
    def bucket(self) -> str:
        return self.store.bucket if self.store else self.stack.bucket

    @property
    def topic(self) -> str:
        # the stream principal may read the ad hoc topics (KAFKA_ADHOC_TOPIC_PREFIX) besides the pipeline's
        return f"{self.stack.kafka_adhoc_topic_prefix}it-stream-{self.name}"

    @property
    def schema(self) -> str:
        return self.name

    @property
    def prefix(self) -> str:
        return f"tests/{self.name}"

    def path(self, what: str) -> str:
        return f"s3a://{self.bucket}/{self.prefix}/{what}"

    def create(self) -> Pipeline:
        admin = KafkaAdminClient(**self.kafka.kafka_login("admin").client_kwargs())
        admin.create_topics([NewTopic(self.topic, num_partitions=self.partitions, replication_factor=1,
                                      topic_configs=self.topic_configs)])
        admin.close()
        create_pipeline_schema(self.stack, self.schema)
        return self

    def destroy(self) -> None:
        admin = KafkaAdminClient(**self.kafka.kafka_login("admin").client_kwargs())
        admin.delete_topics([self.topic])
        admin.close()
        drop_pipeline_schema(self.stack, self.schema)
        s3 = self.s3()
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def s3(self):
        endpoint = self.store.endpoint if self.store else self.stack.s3_endpoint
        return boto3.client("s3", endpoint_url=endpoint, region_name=self.stack.s3_region,
                            aws_access_key_id=self.stack.s3_access_key,
                            aws_secret_access_key=self.stack.s3_secret_key,
                            config=Config(s3={"addressing_style": "path"}))

    # ---- running the job ---------------------------------------------------------------------

    def submit_args(self, job: str, *args: str, conf: dict[str, str] | None = None) -> list[str]:
        """`stackctl spark-submit` of jobs/<job>.py on this pipeline's master, with `conf` (and the
        per-bucket endpoint of the pipeline's own object store, if it has one)."""
        conf = {**(self.store.spark_conf() if self.store else {}), **(conf or {})}
        confs = [f"--conf={key}={value}" for key, value in conf.items()]
        return [str(REPO / "stack" / "bin" / "stackctl"), "spark-submit", "--master", self.master, *confs,
                str(REPO / "jobs" / f"{job}.py"), *args]

    def stream_args(self, *extra: str) -> list[str]:
        """The stream's spark-submit, with the driver's options the iot_stream DAG gives it."""
        conf = {"spark.driver.extraJavaOptions": stream_driver_java_options(Env())}
        names = [arg for key, value in self.names().items() for arg in (NAME_OPTIONS[key], value)]
        return [*self.submit_args("stream", conf=conf), *names, *extra]

    def run_once(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the job with --available-now until it drains the topic and exits."""
        return subprocess.run(self.stream_args("--available-now", *extra), capture_output=True, text=True,
                              timeout=timeout, env=self.env())

    def names(self) -> dict[str, str]:
        """This pipeline's names, as the job's options take them (common.pipeline.NAME_OPTIONS)."""
        return {"topic": self.topic, "checkpoint": self.path("checkpoint"), "bronze_path": self.path("bronze"),
                "quarantine_path": self.path("quarantine"), "pg_schema": self.schema, "query_name": self.name}

    def drain(self, spark) -> int:
        """Run the stream's own code (jobs.stream.run) with --available-now's trigger in `spark`,
        the tier's shared SparkSession, until it drains the topic; return its exit status. For a
        test that needs the topic landed and is not about the job's process (its command line,
        its start, a restart): run_once's driver costs a JVM's start, about 8 s."""
        from jobs.stream import StreamSettings, run

        on_broker = {**Env().as_dict(), "KAFKA_BOOTSTRAP_SERVERS": self.kafka.kafka_bootstrap}
        settings = StreamSettings.from_env(Env(on_broker))
        settings = replace(settings, names=settings.names.own(self.names()))
        return run(spark, settings, {"availableNow": True}, threading.Event())

    def start(self, log_path: Path, *extra: str) -> subprocess.Popen:
        """Start the long-running job in its own process group (so kill -9 takes all of it)."""
        log = log_path.open("ab")
        return subprocess.Popen(self.stream_args(*extra), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=self.env())

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 180) -> int:
        """SIGTERM to the job's process group, as Ctrl-C or a supervisor would (the JVM ignores
        it under `stackctl spark-submit`; the PySpark driver finishes its batch); return the exit status."""
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(timeout=timeout)

    @staticmethod
    def kill9(proc: subprocess.Popen) -> None:
        """kill -9 the job's whole process group (spark-submit's JVM and the Python driver)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    # ---- reading what landed -------------------------------------------------------------------

    def stack_connect(self) -> dict:
        """Return psycopg2 connect arguments for the pipeline's writer role."""
        return self.stack.pg_params()

    def pg(self):
        return open_connection(self.stack_connect(), "iot-tests", autocommit=True)

    def query(self, sql: str) -> list[tuple]:
        conn = self.pg()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("{schema}", self.schema))
                return cur.fetchall() if cur.description is not None else []
        finally:
            conn.close()

    def curated_ids(self) -> list[str]:
        return [str(r[0]) for r in self.query("select event_id from {schema}.sensor_readings")]

    def health_batches(self) -> int:
        return self.query("select count(*) from {schema}.stream_health")[0][0]

    def health_totals(self) -> dict[str, int]:
        row = self.query("select coalesce(sum(rows_in), 0), coalesce(sum(rows_valid), 0), "
                         "coalesce(sum(rows_quarantined), 0), coalesce(sum(rows_inserted), 0), "
                         "coalesce(sum(duplicates), 0), count(*) from {schema}.stream_health")[0]
        return dict(zip(("rows_in", "valid", "quarantined", "inserted", "duplicates", "batches"),
                        (int(x) for x in row), strict=True))

    def bronze_commits(self) -> int:
        """Return how many commits bronze's Delta log holds (0 before the table exists)."""
        listed = self.s3().list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/bronze/_delta_log/")
        return sum(1 for o in listed.get("Contents", []) if o["Key"].endswith(".json"))


@dataclass
class Expected:
    """What the producer sent, per kind, derived from its seeded sequence."""

    total: int
    valid_ids: set[str]
    duplicates: int


def expected_from_seed(count: int, seed: int, sensors: int, bad_rate: float) -> Expected:
    """Regenerate the producer's record kinds and ids (they do not depend on timestamps)."""
    stream = EventStream(Fleet(sensors, seed, f"f{seed}", AnomalyRates()), bad_rate, BAD_CATEGORIES)
    valid_ids: set[str] = set()
    kinds: Counter[str] = Counter()
    for i in range(count):
        record = stream.next_record(1_795_000_000 + i)
        kinds[record.kind] += 1
        if record.kind == VALID:
            valid_ids.add(record.event_id)
    return Expected(total=count, valid_ids=valid_ids, duplicates=kinds["duplicate_event_id"])


def producer_env(stack: StackSettings) -> dict[str, str]:
    """Return the environment of a producer a test starts: tests write topics of their own,
    which only the admin may write (the pipeline's producer principal writes KAFKA_TOPIC only,
    test_kafka_acls.py), so it logs in as the admin, to `stack`'s broker."""
    user, password = stack.kafka_users["admin"]
    return {**os.environ, "KAFKA_PRODUCER_USER": user, "KAFKA_PRODUCER_PASSWORD": password,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap}


def restore_stack(stack: StackSettings) -> None:
    """Bring the stack back after a fault test: a service it stopped, or a program that gave up
    (FATAL) while a dependency was away, is started again by `stackctl up`."""
    from stack import manager

    states = {r["service"]: r["state"] for r in manager.status(stack)}
    if any(state != "RUNNING" for state in states.values()):
        subprocess.run([str(stack.repo / "stack" / "bin" / "stackctl"), "up"], check=True, capture_output=True,
                       timeout=600)


def maps_class_archive(stack: StackSettings, pid: int) -> bool:
    """Return whether process `pid` (a driver's JVM) maps the stack's class data sharing
    archive (stack/class_archive.py)."""
    return str(stack.spark_class_archive) in Path(f"/proc/{pid}/maps").read_text()


def producer_summary(log_path: Path) -> dict:
    """Return the producer's PRODUCER_SUMMARY line (its counts) from its log."""
    line = next(x for x in log_path.read_text().splitlines() if x.startswith("PRODUCER_SUMMARY "))
    return json.loads(line.removeprefix("PRODUCER_SUMMARY "))


def stop_producer(producer: subprocess.Popen, log_path: Path) -> int:
    """SIGTERM the producer; return how many records Kafka acknowledged, asserting it
    acknowledged every one it sent."""
    producer.send_signal(signal.SIGTERM)
    assert producer.wait(timeout=180) == 0, log_path.read_text()[-3000:]
    summary = producer_summary(log_path)
    assert summary["acked"] == summary["sent"], summary
    return summary["acked"]


def topic_records(pipeline: Pipeline) -> int:
    """Return how many records the pipeline's topic holds (the sum of its end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**pipeline.kafka.kafka_login("admin").client_kwargs(), request_timeout_ms=10_000)
    try:
        ends = consumer.end_offsets([TopicPartition(pipeline.topic, i) for i in range(pipeline.partitions)])
        return sum(ends.values())
    finally:
        consumer.close()


def assert_landed_exactly(p: Pipeline, lake, count: int, seed: int, sensors: int, bad_rate: float) -> None:
    """The first `count` records of the seeded producer landed exactly once: every record in
    bronze, every valid one in curated, every bad one in quarantine, and the health rows add
    up (bronze = curated + quarantine + duplicates). Nothing lost, nothing duplicated."""
    expected = expected_from_seed(count, seed, sensors, bad_rate)
    bad = count - len(expected.valid_ids) - expected.duplicates
    curated = p.curated_ids()
    assert len(curated) == len(expected.valid_ids)
    assert set(curated) == expected.valid_ids
    bronze = lake.read.format("delta").load(p.path("bronze"))
    assert bronze.count() == count
    assert bronze.select("partition", "offset").distinct().count() == count
    quarantine = lake.read.format("delta").load(p.path("quarantine"))
    assert quarantine.count() == bad
    assert quarantine.select("partition", "offset").distinct().count() == bad
    health = p.health_totals()
    assert (health["rows_in"], health["inserted"], health["duplicates"], health["quarantined"]) == (
        count, len(expected.valid_ids), expected.duplicates, bad)


def start_producer(pipeline: Pipeline, log_path: Path, *args: str) -> subprocess.Popen:
    """Start the producer CLI in the background on the pipeline's topic."""
    return subprocess.Popen(
        [str(REPO / "stack" / "bin" / "stackctl"), "python", "-m", "producer", "--topic", pipeline.topic,
         "--no-progress", *args], stdout=subprocess.DEVNULL, stderr=log_path.open("ab"),
        env=producer_env(pipeline.kafka))


def send_stamped(pipeline: Pipeline, stamped: list[tuple[bytes, bytes, float]]) -> None:
    """Send (key, value, Kafka timestamp in epoch seconds) records, acks=all; every one acked."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**pipeline.kafka.kafka_login("admin").client_kwargs(), acks="all", linger_ms=20)
    futures = [producer.send(pipeline.topic, key=key, value=value, timestamp_ms=int(ts * 1000))
               for key, value, ts in stamped]
    producer.flush(60)
    for future in futures:
        future.get(timeout=60)  # raises if the record was not acknowledged
    producer.close()


class S3Trace:
    """Every S3 call MinIO serves meanwhile (`mc admin trace`, with the stack's root login in
    mc's environment, not on its command line): what reached the object store, whichever
    client sent it (S3A's, or the SDK client Delta's log store uses)."""

    def __init__(self, stack, pipeline, scratch: Path) -> None:
        self.pipeline = pipeline
        self.env = mc_root_env(stack, scratch / "mc")
        self.mc = str(stack.gobin / "mc")
        self.proc = None
        self.events: list[dict] = []

    def _mark(self, name: str) -> str:
        key = f"{self.pipeline.prefix}/trace-marks/{name}"
        self.pipeline.s3().put_object(Bucket=self.pipeline.bucket, Key=key, Body=b"")
        return key

    def _read_until(self, key: str, timeout_s: float = 60) -> list[dict]:
        events = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if key in event.get("path", ""):
                return events
            events.append(event)
        raise AssertionError(f"mc admin trace did not show {key} within {timeout_s} s")

    def __enter__(self) -> S3Trace:
        self.proc = subprocess.Popen([self.mc, "admin", "trace", "--json", "lakehouse"], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # the trace is attached once it shows a call made after it started
        key = None
        for attempt in range(30):
            key = self._mark(f"start-{attempt}")
            try:
                self._read_until(key, timeout_s=2)
                return self
            except AssertionError:
                continue
        raise AssertionError("mc admin trace showed none of 30 marker writes")

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.events = self._read_until(self._mark("end"))
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def count(self, api: str, path_part: str) -> int:
        return sum(1 for e in self.events if e.get("api", "").removeprefix("s3.") == api
                   and path_part in e.get("path", "") + "?" + urllib.parse.unquote(e.get("query", "")))
