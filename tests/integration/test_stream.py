"""The streaming job end to end against the real Kafka, object store, PostgreSQL and Spark."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from producer.bad_events import BAD_CATEGORIES
from producer.simulation import Fleet
from producer.sinks import KafkaSink
from producer.stream import VALID, EventStream, Record

pytestmark = pytest.mark.integration

RULE_OF_CATEGORY = {
    "malformed_json": "json_object", "wrong_type": "field_types", "missing_field": "required_fields",
    "unknown_city": "known_city", "future_timestamp": "event_time_not_future", "oversized": "payload_size",
    "invalid_utf8": "valid_utf8",
}


def expected_rules(record: Record) -> tuple[str, ...]:
    """The rule a bad record of the producer must fail (the producer's documented defect)."""
    if record.kind == "out_of_range":
        event = json.loads(record.value)
        return ("temperature_range",) if not -50 <= event["temperature_c"] <= 70 else ("humidity_range",)
    return (RULE_OF_CATEGORY[record.kind],)


def send(stack, topic: str, records: list[Record]) -> None:
    sink = KafkaSink(stack.kafka_login("admin"), topic)
    for record in records:
        sink.send(record.key, record.value)
    assert sink.flush(60)
    sink.close()
    assert (sink.acked, sink.failed) == (len(records), 0)


@pytest.fixture(params=["local", "standalone"])
def master(request) -> str:
    """Spark in the driver's JVM, then a real standalone master and worker: the same exact counts."""
    if request.param == "local":
        return "local[2]"
    return request.getfixturevalue("spark_cluster").master_url


def test_end_to_end_then_replay_with_new_offsets(stack, lake, pipeline, master):
    p = pipeline
    p.master = master
    stream = EventStream(Fleet(30, 11, "e2e"), bad_rate=0.3)
    now = time.time()
    records = [stream.next_record(now + i * 0.001) for i in range(900)]
    kinds = {r.kind for r in records}
    assert kinds == {VALID, *BAD_CATEGORIES}, "every bad category must be exercised"
    valid_ids = {r.event_id for r in records if r.kind == VALID}
    bad = [r for r in records if r.kind not in {VALID, "duplicate_event_id"}]
    duplicates = sum(r.kind == "duplicate_event_id" for r in records)
    send(stack, p.topic, records)

    result = p.run_once()
    assert result.returncode == 0, result.stderr[-4000:]

    # curated: exactly the valid event_ids, each once
    curated = p.curated_ids()
    assert len(curated) == len(valid_ids)
    assert set(curated) == valid_ids
    # quarantine: exactly the bad records, raw bytes, with the right reasons
    quarantined = lake.read.format("delta").load(p.path("quarantine")).collect()
    assert sorted((r.value, tuple(r.failed_rules)) for r in quarantined) == sorted(
        (r.value, expected_rules(r)) for r in bad)
    assert {r.topic for r in quarantined} == {p.topic}
    # bronze: every record once, as received
    bronze = lake.read.format("delta").load(p.path("bronze"))
    assert bronze.count() == len(records)
    assert bronze.select("partition", "offset").distinct().count() == len(records)
    assert sorted(r.value for r in bronze.select("value").collect()) == sorted(r.value for r in records)
    # health rows add up, and bronze = curated + quarantine + dropped duplicates
    health = p.health_totals()
    assert health["rows_in"] == 900
    assert health["valid"] == len(valid_ids) + duplicates
    assert health["quarantined"] == len(bad)
    assert health["inserted"] == len(valid_ids)
    assert health["duplicates"] == duplicates
    assert bronze.count() == len(curated) + len(quarantined) + health["duplicates"]
    by_rule = p.query("select key, sum(value::int) from {schema}.stream_health, "
                      "jsonb_each_text(rule_failures) group by key")
    assert dict(by_rule) == dict(Counter(expected_rules(r)[0] for r in bad))

    # replay: the same valid events again, at new offsets
    resent = [r for r in records if r.kind == VALID]
    send(stack, p.topic, resent)
    result = p.run_once()
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.curated_ids()) == sorted(curated)
    health = p.health_totals()
    assert health["rows_in"] == 900 + len(resent)
    assert health["inserted"] == len(valid_ids)
    assert health["duplicates"] == duplicates + len(resent)
    assert lake.read.format("delta").load(p.path("bronze")).count() == 900 + len(resent)
    assert lake.read.format("delta").load(p.path("quarantine")).count() == len(bad)

    if master.startswith("spark://"):
        # the aggregates job on the same cluster, unchanged: each valid event counted once per city
        hour = datetime.fromtimestamp(now, UTC).replace(minute=0, second=0, microsecond=0)
        end = hour + timedelta(hours=2)
        args = p.submit_args("aggregates", "--start", hour.isoformat(), "--end", end.isoformat(),
                             "--bronze-path", p.path("bronze"), "--pg-schema", p.schema)
        result = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        by_city = Counter(json.loads(r.value)["city"] for r in records if r.kind == VALID)
        assert dict(p.query("select city, sum(readings)::int from {schema}.sensor_readings_hourly_city "
                            "group by city")) == dict(by_city)
        assert p.query("select sum(readings)::int from {schema}.sensor_readings_hourly_sensor") == [(len(valid_ids),)]


def test_statuses_are_classified_from_thresholds(stack, lake, pipeline):
    p = pipeline
    base = {"sensor_id": "cls-s0000", "city": "Recife", "event_time": "2026-11-26T12:00:00.000Z",
            "schema_version": 1}
    cases = {(40.0, 50.0): "CRITICAL", (35.0, 50.0): "WARNING", (34.99, 50.0): "OK", (20.0, 14.9): "CRITICAL",
             (20.0, 90.5): "WARNING", (0.0, 50.0): "CRITICAL"}
    rng = random.Random(3)
    records, want = [], {}
    for seq, ((temperature, humidity), status) in enumerate(cases.items(), start=1):
        event_id = f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
        event = {"event_id": event_id, **base, "seq": seq, "temperature_c": temperature, "humidity_pct": humidity}
        records.append(Record(b"cls-s0000", json.dumps(event).encode(), VALID, event_id))
        want[event_id] = status
    send(stack, p.topic, records)
    assert p.drain(lake) == 0
    got = dict(p.query("select event_id::text, status from {schema}.sensor_readings"))
    assert got == want
    times = p.query("select distinct event_time at time zone 'UTC' from {schema}.sensor_readings")
    assert [str(t[0]) for t in times] == ["2026-11-26 12:00:00"]
