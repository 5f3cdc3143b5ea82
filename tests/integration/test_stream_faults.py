"""Faults: kill -9 of the driver while the producer runs, the object store stopped for 60 s
mid-stream, the Kafka broker SIGKILLed three times while the producer sends (PostgreSQL stopped
mid-stream: test_stream_supervision.py, where one outage serves a driver run by hand and an
Airflow-supervised one). Nothing acknowledged may be lost or duplicated. Bounded in count and time;
every target is on loopback.

The object store and the broker that stop are a MinIO and a broker of the test's own
(testkit.own_services: the stack's binaries, configuration and logins, on other loopback ports),
so no other test, nor the running pipeline, loses its own: `make test` runs those two tests
(marked `beside`) in a second pytest process beside the rest of the tier."""

from __future__ import annotations

import dataclasses
import signal
import uuid
from pathlib import Path

import pytest

from common.probes import wait_for
from jobs.scratch import driver_folder_name
from testkit.own_services import OwnBroker, OwnObjectStore
from testkit.pipeline import (
    Pipeline,
    assert_landed_exactly,
    maps_class_archive,
    producer_summary,
    start_producer,
    stop_producer,
    topic_records,
)

pytestmark = pytest.mark.integration

SEED, SENSORS, BAD_RATE = 77, 20, 0.05
SPARK_TEMP_PATTERNS = ("blockmgr-*", "spark-*", "artifacts-*", "liblz4-java-*", "snappy-*", "hadoop-*")


# Five driver starts and a final drain: about 6 minutes on an idle machine, more while the
# running pipeline does its hourly or daily work on the same 2 cores.
@pytest.mark.timeout(1500)
def test_kill_9_of_the_driver_loses_and_duplicates_nothing(stack, lake, pipeline, tmp_path):
    p = pipeline
    scratch = stack.scratch_dirs["stackctl"]  # where `stackctl spark-submit` puts drivers (jobs/scratch.py)
    producer_log = tmp_path / "producer.log"
    # Runs until SIGTERM after the last kill; what it sent is the first N records of its
    # seeded sequence, N from its summary.
    producer = start_producer(p, producer_log, "--rate", "200", "--seed", str(SEED),
                              "--sensors", str(SENSORS), "--bad-rate", str(BAD_RATE))
    kills = []
    killed_folders = []
    driver = None
    spark_in_tmp = spark_temp_entries(Path("/tmp"))
    try:
        for round_no in range(5):
            driver = p.start(tmp_path / f"driver-{round_no}.log", "--trigger-seconds", "1")
            if round_no % 2 == 0:
                # mid-batch: bronze has a new commit, PostgreSQL may not yet
                before = p.bronze_commits()
                wait_for("a new bronze commit", lambda b=before: p.bronze_commits() > b, 240)
                moment = "after a bronze commit"
            else:
                # after the PostgreSQL commit, before Spark records the batch as done
                before = p.health_batches()
                wait_for("a new committed batch", lambda b=before: p.health_batches() > b, 240)
                moment = "after a PostgreSQL commit"
            assert driver.poll() is None, (tmp_path / f"driver-{round_no}.log").read_text()[-3000:]
            # the driver's JVM (stackctl execs into it) keeps its temporary files in a folder of its own
            folder = scratch / driver_folder_name(driver.pid)
            assert any(folder.glob("blockmgr-*")), sorted(scratch.iterdir())
            assert maps_class_archive(stack, driver.pid)  # the JVM (stackctl execs into it)
            p.kill9(driver)
            kills.append(moment)
            killed_folders.append(folder)
            assert folder.is_dir()  # what kill -9 leaves, until the next driver starts
        producer.send_signal(signal.SIGTERM)
        assert producer.wait(timeout=120) == 0, producer_log.read_text()[-3000:]
    finally:
        # an early failure must not leave a driver or the producer running into the next test
        if driver is not None and driver.poll() is None:
            p.kill9(driver)
        if producer.poll() is None:
            producer.kill()
    assert len(kills) == 5
    summary = producer_summary(producer_log)
    count = summary["acked"]
    assert count == summary["sent"] > 1000

    result = p.run_once()  # restart once more and drain
    assert result.returncode == 0, result.stderr[-4000:]
    assert_landed_exactly(p, lake, count, SEED, SENSORS, BAD_RATE)
    # each new driver removed the folders of those killed before it; none left a file in /tmp
    assert [f for f in killed_folders if f.exists()] == []
    assert spark_temp_entries(Path("/tmp")) - spark_in_tmp == set()


def spark_temp_entries(folder: Path) -> set[str]:
    """Return the names in `folder` that Spark's JVM and its libraries make in a temp folder."""
    return {p.name for pattern in SPARK_TEMP_PATTERNS for p in folder.glob(pattern)}


def grows_by(p: Pipeline, records: int):
    """Return a condition: the topic holds `records` more than now (the producer's own clock)."""
    target = topic_records(p) + records
    return lambda: topic_records(p) >= target


RATE = 150  # events/s of the fault tests' producer


@pytest.fixture
def own_store_pipeline(stack, lake):
    """A pipeline of the test's own whose bucket is on a MinIO of the test's own
    (testkit.own_services): stopping it stops no other test's (nor the running pipeline's)
    object store. The tier's session reaches the bucket through S3A's per-bucket endpoint."""
    name = f"t{uuid.uuid4().hex[:10]}"
    with OwnObjectStore(stack, f"faults-{name}") as store:
        hadoop = lake.sparkContext._jsc.hadoopConfiguration()
        keys = {key.removeprefix("spark.hadoop."): value for key, value in store.spark_conf().items()}
        for key, value in keys.items():
            hadoop.set(key, value)
        p = Pipeline(stack, name=name, store=store).create()
        try:
            yield p
        finally:
            try:
                p.destroy()
            finally:
                for key in keys:
                    hadoop.unset(key)


@pytest.mark.beside
@pytest.mark.timeout(1200)
def test_object_store_stopped_for_60_s_loses_and_duplicates_nothing(stack, lake, own_store_pipeline, tmp_path):
    p = own_store_pipeline
    store = p.store
    producer_log = tmp_path / "producer.log"
    producer = start_producer(p, producer_log, "--rate", str(RATE), "--seed", str(SEED),
                              "--sensors", str(SENSORS), "--bad-rate", str(BAD_RATE))
    driver_log = tmp_path / "driver.log"
    driver = p.start(driver_log, "--trigger-seconds", "1")
    try:
        wait_for("two committed batches", lambda: p.health_batches() >= 2, 480)
        # the stream's files are on the test's MinIO (its checkpoint's metadata: head_object
        # raises if absent), none on the stack's
        p.s3().head_object(Bucket=p.bucket, Key=f"{p.prefix}/checkpoint/metadata")
        on_stacks = dataclasses.replace(p, store=None).s3().list_objects_v2(Bucket=stack.bucket, Prefix=p.prefix)
        assert on_stacks["KeyCount"] == 0
        store.stop()
        try:
            # down while the producer sends 60 s of records (its pacing is the clock)
            wait_for("60 s of records sent while the object store is down", grows_by(p, RATE * 60), 240)
            assert not store.ready()
        finally:
            store.start()  # and waits until it serves
        wait_for("10 s more of records", grows_by(p, RATE * 10), 120)
        count = stop_producer(producer, producer_log)
    finally:
        if producer.poll() is None:
            producer.kill()
        if driver.poll() is None:
            Pipeline.stop(driver)  # a driver that rode out the outage stops cleanly
    result = p.run_once()  # what a supervisor does: restart from the checkpoint, drain
    assert result.returncode == 0, result.stderr[-4000:]
    assert_landed_exactly(p, lake, count, SEED, SENSORS, BAD_RATE)


@pytest.fixture
def own_broker_pipeline(stack):
    """A pipeline of the test's own whose topic is on a Kafka broker of the test's own
    (testkit.own_services), set up as the stack's (SCRAM users, ACLs): killing it kills no
    other test's (nor the running pipeline's) broker."""
    name = f"t{uuid.uuid4().hex[:10]}"
    with OwnBroker(stack, name) as broker:
        p = Pipeline(stack, name=name, broker=broker).create()
        try:
            yield p
        finally:
            p.destroy()


@pytest.mark.beside
@pytest.mark.timeout(1200)
def test_broker_sigkilled_three_times_while_the_producer_sends(stack, lake, own_broker_pipeline, tmp_path):
    p = own_broker_pipeline
    broker = p.broker
    producer_log = tmp_path / "producer.log"
    producer = start_producer(p, producer_log, "--rate", str(RATE), "--seed", str(SEED),
                              "--sensors", str(SENSORS), "--bad-rate", str(BAD_RATE))
    driver = p.start(tmp_path / "driver.log", "--trigger-seconds", "1")
    killed = []
    try:
        wait_for("a committed batch", lambda: p.health_batches() >= 1, 480)
        for _ in range(3):
            wait_for("10 s of records", grows_by(p, RATE * 10), 240)
            killed.append(broker.kill())  # SIGKILL; then started again, as supervisord does
            broker.start()  # and waits until it answers
        wait_for("10 s more of records", grows_by(p, RATE * 10), 240)
        count = stop_producer(producer, producer_log)
    finally:
        if producer.poll() is None:
            producer.kill()
        if driver.poll() is None:
            Pipeline.stop(driver)
    assert len(set(killed)) == 3
    result = p.run_once()
    assert result.returncode == 0, result.stderr[-4000:]
    assert_landed_exactly(p, lake, count, SEED, SENSORS, BAD_RATE)
