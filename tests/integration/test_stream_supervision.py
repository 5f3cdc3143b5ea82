"""The stream under the real Airflow scheduler: kill -9 of the driver, Airflow resubmits it with
no human step and batches resume within 3 minutes; then a stop from the UI's "mark success"
(the same API call) lets the running micro-batch finish and leaves the checkpoint consistent.
And PostgreSQL stopped for 30 s under it and under a driver run by hand.
Runs on the ad hoc stream DAG with the test's own names; the pipeline's stream is untouched.

It runs at any minute of the hour, whatever the pipeline's batch jobs do: they start at the
lowest CPU priority (orchestration/operators.py, BATCH_JOB_NICENESS), so the hourly aggregates
no longer take the core a resubmitted driver needs. (At the same priority as the stream, the
same kill took 163 s to resume while they ran; the test used to wait for hh:10 to hh:52.)"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from common.probes import wait_for
from stack.manager import airflow_api
from testkit.pipeline import (
    Pipeline,
    assert_landed_exactly,
    expected_from_seed,
    maps_class_archive,
    producer_summary,
    restore_stack,
    start_producer,
    stop_producer,
    topic_records,
)

pytestmark = pytest.mark.integration

SEED, SENSORS, BAD_RATE = 55, 20, 0.05
DAG_ID = "iot_stream_adhoc"


def drivers_of(p: Pipeline) -> list[psutil.Process]:
    """The spark-submit JVM and the PySpark driver running the test's stream."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "--query-name" in cmdline and p.name in cmdline and any(a.endswith("jobs/stream.py") for a in cmdline):
            found.append(proc)
    return found


def assert_job_gets_only_what_it_needs(stack, drivers: list[psutil.Process]) -> None:
    """The driver Airflow started holds none of Airflow's variables (metadata DB URI, Fernet
    key, JWT and API secrets, connections), and its env file none of the other secrets."""
    from common.env import GENERATED_SECRETS, parse_env_file

    for proc in drivers:
        environ = proc.environ()
        assert sorted(k for k in environ if "AIRFLOW" in k.upper()) == [], proc.cmdline()[:2]
        env_file = Path(environ["IOT_ENV_FILE"])
        assert env_file != stack.repo / ".env"
        held = {k for k, v in {**parse_env_file(env_file), **environ}.items() if k in GENERATED_SECRETS and v}
        assert held == {"PIPELINE_DB_PASSWORD", "S3_SECRET_KEY", "KAFKA_STREAM_PASSWORD"}, proc.cmdline()[:2]


def start_adhoc_run(api, p: Pipeline) -> str:
    """Unpause the ad hoc stream DAG, trigger it on the test's own names, wait for its first
    committed batches; return the run id."""
    conf = {"topic": p.topic, "pg_schema": p.schema, "checkpoint": p.path("checkpoint"),
            "bronze_path": p.path("bronze"), "quarantine_path": p.path("quarantine"), "query_name": p.name}
    api.set_paused(DAG_ID, False)
    run_id = api.trigger(DAG_ID, conf)
    wait_for("the first committed batches", lambda: p.health_batches() >= 2, 300)
    return run_id


def stop_run_cleanly(api, p: Pipeline, run_id: str, count: int, drain_timeout: float) -> None:
    """Wait until the stream has read `count` records, then "mark success" on the running task,
    as from the UI: the driver finishes its batch and exits by itself."""
    wait_for("the stream to drain the topic", lambda: p.health_totals()["rows_in"] >= count, drain_timeout)
    assert api.stop_running(DAG_ID) == [run_id]
    running = drivers_of(p)
    wait_for("the driver to stop by itself", lambda: not any(proc.is_running() for proc in running), 180)


def tear_down_run(api, p: Pipeline, producer) -> None:
    """Pause the DAG and end whatever of the run is left: the producer, the task, its drivers."""
    api.set_paused(DAG_ID, True)
    if producer.poll() is None:
        producer.kill()
    api.stop_running(DAG_ID)
    for proc in drivers_of(p):
        proc.kill()


def checkpoint_batches(p: Pipeline, what: str) -> set[int]:
    """Batch ids with a file in the checkpoint's offsets/ or commits/ folder."""
    prefix = f"{p.prefix}/checkpoint/{what}/"
    keys = [o["Key"] for page in p.s3().get_paginator("list_objects_v2").paginate(Bucket=p.stack.bucket,
                                                                                 Prefix=prefix)
            for o in page.get("Contents", [])]
    return {int(k[len(prefix):]) for k in keys if k[len(prefix):].isdigit()}


# beside the other tests (make test-integration): no other test uses the ad hoc DAG but the
# PostgreSQL outage's, which is exclusive, and most of this one is waiting for the scheduler
@pytest.mark.beside
@pytest.mark.timeout(900)
def test_airflow_resubmits_a_killed_driver_and_stops_it_cleanly(stack, lake, pipeline, tmp_path):
    p = pipeline
    api = airflow_api(stack)
    producer_log = tmp_path / "producer.log"
    producer = start_producer(p, producer_log, "--rate", "40", "--seed", str(SEED), "--sensors", str(SENSORS),
                              "--bad-rate", str(BAD_RATE))
    try:
        run_id = start_adhoc_run(api, p)
        first = drivers_of(p)
        assert len(first) == 2, [proc.cmdline()[:3] for proc in first]  # the JVM and the Python driver
        assert_job_gets_only_what_it_needs(stack, first)
        assert [maps_class_archive(stack, proc.pid) for proc in first if proc.name() == "java"] == [True]

        batches = p.health_batches()
        for proc in first:
            proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        killed = {proc.pid for proc in first}
        wait_for("Airflow to submit a new driver",
                 lambda: (d := drivers_of(p)) and not killed & {x.pid for x in d}, 180)
        wait_for("a batch to commit", lambda: p.health_batches() >= batches + 1,
                 max(1.0, 180 - (time.monotonic() - killed_at)))
        committed_after = time.monotonic() - killed_at
        wait_for("batches to resume", lambda: p.health_batches() >= batches + 2,
                 max(1.0, 180 - (time.monotonic() - killed_at)))
        resumed_after = time.monotonic() - killed_at
        assert resumed_after <= 180
        (ti,) = api.task_instances(DAG_ID, run_id)
        assert (ti["state"], ti["try_number"]) == ("running", 2)  # the retry, not a human

        producer.send_signal(signal.SIGTERM)
        assert producer.wait(timeout=120) == 0, producer_log.read_text()[-3000:]
        count = producer_summary(producer_log)["acked"]
        stop_run_cleanly(api, p, run_id, count, 300)
    finally:
        tear_down_run(api, p, producer)

    # a clean stop: no sink wrote a batch the checkpoint has not committed, and at most the
    # next batch is planned (Spark runs it on the next start; nothing of it was written)
    commits = checkpoint_batches(p, "commits")
    assert checkpoint_batches(p, "offsets") - commits <= {max(commits) + 1}
    assert {b for (b,) in p.query("select batch_id from {schema}.stream_health")} <= commits
    print(f"driver killed -> next batch committed in {committed_after:.0f} s, two in {resumed_after:.0f} s")
    result = p.run_once()  # a restart from that checkpoint: runs cleanly and changes nothing
    assert result.returncode == 0, result.stderr[-4000:]
    # and nothing lost or duplicated across the kill -9 and the resubmission
    expected = expected_from_seed(count, SEED, SENSORS, BAD_RATE)
    curated = p.curated_ids()
    assert len(curated) == len(expected.valid_ids)
    assert set(curated) == expected.valid_ids
    bronze = lake.read.format("delta").load(p.path("bronze"))
    assert bronze.count() == count
    assert bronze.select("partition", "offset").distinct().count() == count
    health = p.health_totals()
    assert (health["rows_in"], health["inserted"], health["duplicates"]) == (
        count, len(expected.valid_ids), expected.duplicates)


@pytest.mark.exclusive
@pytest.mark.timeout(1500)
def test_postgres_stopped_30_s_under_a_standalone_and_an_airflow_supervised_stream(stack, lake, pipeline,
                                                                                 another_pipeline, tmp_path):
    """PostgreSQL holds the curated rows and Airflow's metadata: both go away for 30 s while two
    streams run and their producers send. A driver run by hand must fail loudly (not swallow
    the error) and its restart land every record exactly once; the Airflow-supervised stream
    must be brought back by Airflow by itself, and land every record exactly once too. One
    outage serves both (it is the same fault, and the longest part of each)."""
    from common.probes import airflow_health, port_open
    from stack import manager
    from stack.init import pg_ready

    p, alone = pipeline, another_pipeline  # the Airflow-supervised stream's, the standalone driver's
    api = airflow_api(stack)
    sup = manager.Supervisor(stack)
    producer_log, alone_producer_log, alone_log = (tmp_path / "producer.log", tmp_path / "alone-producer.log",
                                                   tmp_path / "alone-driver.log")
    rate, alone_count = 100, 8000
    producer = start_producer(p, producer_log, "--rate", str(rate), "--seed", str(SEED), "--sensors", str(SENSORS),
                              "--bad-rate", str(BAD_RATE))
    alone_producer = start_producer(alone, alone_producer_log, "--rate", "200", "--count", str(alone_count),
                                    "--seed", str(SEED), "--sensors", str(SENSORS), "--bad-rate", str(BAD_RATE))
    alone_driver = alone.start(alone_log, "--trigger-seconds", "1")
    alone_exit = None
    try:
        run_id = start_adhoc_run(api, p)
        wait_for("two committed batches of the standalone driver", lambda: alone.health_batches() >= 2, 480)
        sent_before = topic_records(p)
        sup.stop("postgres")
        try:
            # the standalone driver must fail while PostgreSQL is down, within 30 s
            try:
                alone_exit = alone_driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                alone_exit = None
            # down while the supervised stream's producer sends 30 s of records (its pacing is the clock)
            wait_for("30 s of records sent while PostgreSQL is down",
                     lambda: topic_records(p) >= sent_before + rate * 30, 180)
            assert not port_open("127.0.0.1", stack.pg_port)
        finally:
            sup.start("postgres")
            wait_for("PostgreSQL back", lambda: pg_ready(stack), 120)
            if alone_driver.poll() is None:
                alone.kill9(alone_driver)
        assert alone_exit not in (None, 0), "the standalone driver kept running while PostgreSQL was down"
        assert "query failed" in alone_log.read_text()

        batches = p.health_batches()
        wait_for("Airflow healthy again", lambda: all(
            airflow_health(f"http://127.0.0.1:{stack.airflow_port}").get(c) == "healthy"
            for c in ("metadatabase", "scheduler", "dag_processor", "triggerer")), 300)
        wait_for("the supervised stream to commit batches again", lambda: p.health_batches() >= batches + 2, 600)
        assert [ti["state"] for ti in api.task_instances(DAG_ID, run_id)] == ["running"]

        count = stop_producer(producer, producer_log)
        stop_run_cleanly(api, p, run_id, count, 600)
        assert alone_producer.wait(timeout=240) == 0, alone_producer_log.read_text()[-3000:]
    finally:
        tear_down_run(api, p, producer)
        if alone_producer.poll() is None:
            alone_producer.kill()
        if alone_driver.poll() is None:
            alone.kill9(alone_driver)
        restore_stack(stack)  # an Airflow component may have given up while PostgreSQL was away

    assert_landed_exactly(p, lake, count, SEED, SENSORS, BAD_RATE)
    result = alone.run_once()  # the restart a supervisor would do
    assert result.returncode == 0, result.stderr[-4000:]
    assert_landed_exactly(alone, lake, alone_count, SEED, SENSORS, BAD_RATE)
