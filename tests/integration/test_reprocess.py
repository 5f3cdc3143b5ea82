"""The reprocess drill on names of its own: stream records (bad ones included), lose curated and
rebuild it from bronze, change a status threshold and rebuild, kill -9 a rebuild halfway and
run it again. Expectations are worked out here from what was sent, not from jobs/reprocess.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest

from common.probes import wait_for
from producer.simulation import Fleet
from producer.stream import VALID, EventStream
from testkit.pipeline import Pipeline, send_stamped
from testkit.schemas import create_pipeline_schema, marts_schema_of

pytestmark = pytest.mark.integration

CURATED = ("event_id, sensor_id, seq, city, temperature_c, humidity_pct, status, event_time, kafka_topic, "
           "kafka_partition, kafka_offset")


def status_of(t: float, h: float, warning_high: float = 35.0) -> str:
    """The documented default thresholds (STATUS_WARNING_TEMP_HIGH_C as given), written out
    independently of jobs/transform.py."""
    if t >= 40 or t <= 0 or h < 15:
        return "CRITICAL"
    if t >= warning_high or t <= 5 or h < 30 or h > 90:
        return "WARNING"
    return "OK"


def reprocess_args(p: Pipeline, *extra: str) -> list[str]:
    return p.submit_args("reprocess", "--topic", p.topic, "--pg-schema", p.schema, "--bronze-path", p.path("bronze"),
                         "--quarantine-path", p.path("quarantine"), "--query-name", p.name, *extra)


def reprocess(p: Pipeline, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(reprocess_args(p, *extra), capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def curated(p: Pipeline) -> list[tuple]:
    return p.query(f"select {CURATED} from {{schema}}.sensor_readings order by event_id")


def runs(p: Pipeline) -> list[tuple]:
    return p.query("select state, chunks_done, chunks_total, rows_read, counts from {schema}.reprocess_runs "
                   "order by run_id")


@pytest.mark.timeout(1200)
def test_rebuild_rethreshold_and_resume_after_kill_9(stack, lake, pipeline):
    p = pipeline
    create_pipeline_schema(stack, p.schema, marts=True)  # the marts over the test's schema (removed with it)
    # 1. stream N records, bad ones and re-sent copies included
    stream = EventStream(Fleet(24, 31, "rep"), bad_rate=0.1)
    now = time.time()
    records = [stream.next_record(now - 600 + i * 0.25) for i in range(2400)]
    send_stamped(p, [(r.key, r.value, now - 600 + i * 0.25) for i, r in enumerate(records)])
    valid = {}
    for r in records:
        if r.kind == VALID and r.event_id not in valid:
            valid[r.event_id] = json.loads(r.value)
    assert p.drain(lake) == 0
    before = curated(p)
    assert {str(row[0]) for row in before} == set(valid)
    assert {str(row[0]): row[6] for row in before} == {
        k: status_of(v["temperature_c"], v["humidity_pct"]) for k, v in valid.items()}

    # 2. PostgreSQL's curated rows lost: a dry run says what it would add and writes nothing,
    #    then the rebuild gives back the same event_ids, values and Kafka coordinates
    p.query("truncate {schema}.sensor_readings")
    dry = reprocess(p, "--dry-run")
    assert re.search(r"^ +added +(\d+) ", dry.stdout, re.M).group(1) == str(len(valid)), dry.stdout
    assert curated(p) == []
    assert runs(p) == []
    reprocess(p)
    assert curated(p) == before
    ((state, done, total, read, counts),) = runs(p)
    assert (state, done, total, read) == ("done", 3, 3, len(records))  # one chunk per partition
    assert sum(counts["added"].values()) == len(valid)
    assert counts["removed"] == {}
    assert counts["reclassified"] == {}
    # the quarantine the stream wrote is what the current rules decide: nothing promoted or new
    assert (counts["promoted"], counts["newly_quarantined"]) == ({}, {})

    # 3. a threshold changes (WARNING from the OK readings' upper quartile of temperature
    #    instead of 35 °C): only the readings between them that were OK change, to WARNING,
    #    and the marts show the new statuses
    ok = sorted(v["temperature_c"] for v in valid.values() if status_of(v["temperature_c"], v["humidity_pct"]) == "OK")
    warning_high = ok[len(ok) * 3 // 4]
    env = {"STATUS_WARNING_TEMP_HIGH_C": str(warning_high)}
    new_status = {k: status_of(v["temperature_c"], v["humidity_pct"], warning_high) for k, v in valid.items()}
    changed = {k for k, v in valid.items() if new_status[k] != status_of(v["temperature_c"], v["humidity_pct"])}
    assert len(changed) >= len(ok) // 5, (warning_high, len(changed))
    assert {new_status[k] for k in changed} == {"WARNING"}
    reprocess(p, env=env)
    after = curated(p)
    assert {str(r[0]): r[6] for r in after} == new_status
    assert [r[:6] + r[7:] for r in after] == [r[:6] + r[7:] for r in before]  # nothing else moved
    counts = runs(p)[-1][4]
    assert counts["reclassified"] == {"OK->WARNING": len(changed)}
    assert sum(counts["added"].values()) == 0
    assert counts["unchanged"] == len(valid) - len(changed)
    marts = p.query(f"select sum(ok_readings), sum(warning_readings), sum(critical_readings) "
                    f"from {marts_schema_of(p.schema)}.hourly_city")
    assert [tuple(int(x) for x in marts[0])] == [tuple(sum(s == k for s in new_status.values())
                                                       for k in ("OK", "WARNING", "CRITICAL"))]

    # 4. curated lost again, and the rebuild killed with -9 halfway: run again, same result,
    #    every chunk once
    p.query("truncate {schema}.sensor_readings")
    proc = subprocess.Popen(reprocess_args(p, "--chunk-rows", "20"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **env})
    try:
        killed_run = len(runs(p)) + 1
        wait_for("three chunks committed", lambda: len(runs(p)) == killed_run and runs(p)[-1][1] >= 3, 300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    state, done, total, _, _ = runs(p)[-1]
    assert state == "running"
    assert 3 <= done < total, (done, total)
    partial = len(curated(p))
    assert 0 < partial < len(valid)
    resumed = reprocess(p, "--chunk-rows", "20", env=env)
    assert f"resuming run {killed_run}" in resumed.stdout + resumed.stderr
    assert len(runs(p)) == killed_run  # the same run, resumed
    state, done2, total2, read, counts = runs(p)[-1]
    assert (state, done2, total2, read) == ("done", total, total, len(records))
    assert {str(r[0]): r[6] for r in curated(p)} == new_status
    assert [r[:6] + r[7:] for r in curated(p)] == [r[:6] + r[7:] for r in before]
    assert sum(counts["added"].values()) == len(valid)  # each row added once, across the kill
    assert p.query("select count(*), count(distinct chunk_no) from {schema}.reprocess_chunks "
                   f"where run_id = {killed_run}") == [(total, total)]


def quarantined(lake, p: Pipeline) -> list[tuple]:
    rows = lake.read.format("delta").load(p.path("quarantine")).select("partition", "offset", "value", "failed_rules")
    return sorted((r.partition, r.offset, r.value, tuple(r.failed_rules)) for r in rows.collect())


@pytest.mark.timeout(900)
def test_quarantine_decisions_are_handed_to_the_running_stream(stack, lake, pipeline, dag_runner, tmp_path):
    """The quarantine table as a derivation bug could have left it (a bad record missing, one
    with the wrong reason, a valid record quarantined) is put right by a reprocess, run by the
    iot_reprocess DAG, while the stream runs, and only by the stream: it is the table's one
    writer."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    p = pipeline
    stream = EventStream(Fleet(12, 7, "rq"), bad_rate=0.3)
    now = time.time()
    records = [stream.next_record(now - 300 + i * 0.25) for i in range(600)]
    send_stamped(p, [(r.key, r.value, now - 300 + i * 0.25) for i, r in enumerate(records)])
    assert p.drain(lake) == 0
    original = quarantined(lake, p)
    curated_before = curated(p)
    missing, wrong = original[0], original[1]
    assert wrong[3] != ("payload_size",)
    valid_partition, valid_offset = curated_before[0][9], curated_before[0][10]

    # the test's own table, no stream running: written here to set the scene
    table = DeltaTable.forPath(lake, p.path("quarantine"))
    table.delete(f"`partition` = {missing[0]} and `offset` = {missing[1]}")
    table.update(f"`partition` = {wrong[0]} and `offset` = {wrong[1]}", {"failed_rules": "array('payload_size')"})
    bronze = lake.read.format("delta").load(p.path("bronze"))
    (bronze.where((F.col("partition") == valid_partition) & (F.col("offset") == valid_offset))
     .select("key", "value", F.col("value").cast("string").alias("value_text"), "topic", "partition", "offset",
             "kafka_timestamp", F.array(F.lit("temperature_range")).alias("failed_rules"),
             F.current_timestamp().alias("quarantined_at"), "kafka_date")
     .write.format("delta").mode("append").save(p.path("quarantine")))
    assert len(quarantined(lake, p)) == len(original)

    driver = p.start(tmp_path / "driver.log", "--trigger-seconds", "1")  # the stream, which applies them
    try:
        conf = {"dry_run": False, "topic": p.topic, "pg_schema": p.schema, "bronze_path": p.path("bronze"),
                "quarantine_path": p.path("quarantine"), "query_name": p.name}
        assert dag_runner.test("iot_reprocess", datetime.now(UTC), conf) == "success"
    finally:
        assert Pipeline.stop(driver) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    counts = runs(p)[-1][4]
    assert p.query("select requested_by like 'airflow:%%', state from {schema}.reprocess_runs") == [(True, "done")]
    assert counts["promoted"] == {"temperature_range": 1}
    assert counts["newly_quarantined"] == dict.fromkeys(missing[3], 1)
    assert counts["reasons_changed"] == 1
    assert (counts["added"], counts["removed"], counts["reclassified"], counts["updated"]) == ({}, {}, {}, {})
    assert quarantined(lake, p) == original
    assert curated(p) == curated_before
    ((kind, state, result),) = p.query("select kind, state, result from {schema}.lake_maintenance")
    assert (kind, state, result["quarantine"]) == ("requarantine", "done", {"inserted": 1, "updated": 1, "deleted": 1})
