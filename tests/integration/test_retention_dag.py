"""The retention DAG with dag.test() while the stream runs and the producer sends: old rows and
partitions go, recent ones stay, and the stream (the lake's only writer) loses no commit and no
record while it carries out the maintenance between two micro-batches."""

from __future__ import annotations

import json
import signal
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from common.probes import wait_for
from producer.serialization import serialize
from producer.simulation import format_event_time
from testkit.pipeline import Pipeline, expected_from_seed, send_stamped, start_producer

pytestmark = pytest.mark.integration

SEED, SENSORS, BAD_RATE = 91, 12, 0.05
OLD_VALID, OLD_BAD = 40, 10
RETENTION_ENV = {"RETENTION_POSTGRES_DAYS": "30", "RETENTION_LAKE_DAYS": "30", "RETENTION_VACUUM_HOURS": "168",
                 "KAFKA_TOPIC_RETENTION_HOURS": "72", "RETENTION_DELETE_BATCH_ROWS": "7"}


@pytest.fixture
def pipeline(stack):
    # records stamped 40 days ago: without this the broker's retention may delete them first
    p = Pipeline(stack, topic_configs={"retention.ms": "-1"}).create()
    yield p
    p.destroy()


def old_records(now: datetime) -> list[tuple[bytes, bytes, float]]:
    """Readings stamped 40 days ago (event time and Kafka time): valid ones, and some with an
    impossible temperature (quarantined)."""
    ts = (now - timedelta(days=40)).timestamp()
    records = []
    for i in range(OLD_VALID + OLD_BAD):
        event = {"event_id": str(uuid.uuid4()), "sensor_id": "old-s0000", "seq": i + 1, "city": "Recife",
                 "temperature_c": 27.5 if i < OLD_VALID else 999.0, "humidity_pct": 70.0,
                 "event_time": format_event_time(ts + i), "schema_version": 1}
        records.append((b"old-s0000", serialize(event), ts + i))
    return records


def test_retention_while_the_stream_runs(stack, lake, pipeline, dag_runner, tmp_path, monkeypatch):
    p = pipeline
    for key, value in RETENTION_ENV.items():
        monkeypatch.setenv(key, value)
    now = datetime.now(UTC)
    send_stamped(p, old_records(now))
    producer_log = tmp_path / "producer.log"
    # runs until SIGTERM, so batches keep coming before and after the maintenance however
    # loaded the machine is; what it sent is the first N records of its seeded sequence
    producer = start_producer(p, producer_log, "--rate", "50", "--seed", str(SEED),
                              "--sensors", str(SENSORS), "--bad-rate", str(BAD_RATE))
    driver = p.start(tmp_path / "driver.log", "--trigger-seconds", "1")
    try:
        # a few batches first, so that today's partition has small files to compact
        wait_for("the stream to land the old records and three batches",
                 lambda: p.health_batches() >= 3, 300)
        assert p.query("select count(*) from {schema}.sensor_readings where event_time < now() - interval '30 days'"
                       ) == [(OLD_VALID,)]
        logical = now.replace(hour=3, minute=0, second=0, microsecond=0)
        state = dag_runner.test("iot_retention", logical, {"pg_schema": p.schema, "topic": p.topic,
                                                            "query_name": p.name})
        assert state == "success"
        wait_for("a batch after the maintenance", lambda: p.query(
            "select count(*) from {schema}.stream_health h, {schema}.lake_maintenance m "
            "where h.rows_in > 0 and h.batch_started_at > m.finished_at")[0][0] > 0, 180)
        producer.send_signal(signal.SIGTERM)
        assert producer.wait(timeout=120) == 0, producer_log.read_text()[-3000:]
        summary = json.loads(next(x for x in producer_log.read_text().splitlines()
                                  if x.startswith("PRODUCER_SUMMARY ")).removeprefix("PRODUCER_SUMMARY "))
        count = summary["acked"]
        wait_for("the stream to drain the topic",
                 lambda: p.health_totals()["rows_in"] == OLD_VALID + OLD_BAD + count, 300)
        assert p.stop(driver) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        if producer.poll() is None:
            producer.kill()
        if driver.poll() is None:
            p.kill9(driver)
    log = (tmp_path / "driver.log").read_text()
    assert "lake maintenance 1 done" in log

    # PostgreSQL: the old rows are gone, every recent valid reading is there exactly once
    expected = expected_from_seed(count, SEED, SENSORS, BAD_RATE)
    assert set(p.curated_ids()) == expected.valid_ids
    assert len(p.curated_ids()) == len(expected.valid_ids)

    # the maintenance request: carried out by the stream, with what it removed, between batches
    # that kept landing records before and after it
    (state, result), = p.query("select state, result from {schema}.lake_maintenance")
    assert state == "done"
    (before, after), = p.query(
        "select count(*) filter (where h.batch_finished_at < m.started_at), "
        "count(*) filter (where h.batch_started_at > m.finished_at) "
        "from {schema}.stream_health h, {schema}.lake_maintenance m where h.rows_in > 0")
    assert before > 0, "no batch landed before the maintenance"
    assert after > 0, "no batch landed after the maintenance"
    assert result["bronze"]["deleted_rows"] == OLD_VALID + OLD_BAD
    assert result["quarantine"]["deleted_rows"] == OLD_BAD
    assert result["bronze"]["compaction_files_added"] == 1  # today's small files, compacted into one
    assert result["bronze"]["compaction_files_removed"] >= 3

    # the lake: no old partition; every recent record once; no commit of the stream lost
    cutoff = (logical - timedelta(days=30)).date()
    bronze = lake.read.format("delta").load(p.path("bronze"))
    assert bronze.where(f"kafka_date < '{cutoff}'").count() == 0
    assert bronze.count() == count
    assert bronze.select("partition", "offset").distinct().count() == count
    bad_new = count - len(expected.valid_ids) - expected.duplicates
    quarantine = lake.read.format("delta").load(p.path("quarantine"))
    assert quarantine.count() == bad_new
    history = lake.sql(f"describe history delta.`{p.path('bronze')}`").select("operation", "userMetadata").collect()
    operations = {r.operation for r in history}
    assert {"DELETE", "OPTIMIZE", "VACUUM START", "VACUUM END"} <= operations
    committed = {int(r.userMetadata.rsplit(":", 1)[1]) for r in history if r.userMetadata}
    batches = {b for (b,) in p.query("select batch_id from {schema}.stream_health where rows_in > 0")}
    assert committed == batches

    # Kafka: the topic's retention now is the configured one
    from orchestration.retention import set_topic_retention

    before, after = set_topic_retention(stack.kafka_login("admin"), p.topic, 72)
    assert before == after == str(72 * 3_600_000)
