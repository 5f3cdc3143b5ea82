"""The hourly aggregates DAG with dag.test() against the real stack: a 3-hour backfill from the
lake, exact figures worked out here from what was sent, then a rerun that changes nothing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from producer.simulation import Fleet
from producer.stream import VALID, EventStream
from testkit.pipeline import Pipeline, send_stamped

pytestmark = pytest.mark.integration

LATENESS_H = 2  # AGGREGATES_LATENESS_HOURS's default


def status_of(t: float, h: float) -> str:
    """The documented default thresholds, written out independently of jobs/transform.py."""
    if t >= 40 or t <= 0 or h < 15:
        return "CRITICAL"
    if t >= 35 or t <= 5 or h < 30 or h > 90:
        return "WARNING"
    return "OK"


def table(p: Pipeline, name: str) -> list[tuple]:
    return p.query(f"select * from {{schema}}.{name} order by 1, 2")


def test_backfill_of_three_hours_then_a_rerun_changes_nothing(stack, lake, pipeline, dag_runner):
    p = pipeline
    h0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)
    stream = EventStream(Fleet(16, 21, "agg"), bad_rate=0.05)
    stamped, readings = [], []  # readings: (event_id, hour, sensor, city, t, h, kafka ts) of valid ones
    seen: set[str] = set()
    for i in range(3 * 3600 // 4):  # one record every 4 s over the three hours
        ts = h0.timestamp() + i * 4 + 0.5
        record = stream.next_record(ts)
        kafka_ts = ts + 1.0
        stamped.append((record.key, record.value, kafka_ts))
        if record.kind == VALID:
            readings.append((record.event_id, json.loads(record.value), kafka_ts))
    # late events of hour 0: one inside the lateness window, one after it
    for late_h in (LATENESS_H - 0.5, LATENESS_H + 0.5):
        while (record := stream.next_record(h0.timestamp() + 1800)).kind != VALID:
            pass
        kafka_ts = (h0 + timedelta(hours=1 + late_h)).timestamp()
        stamped.append((record.key, record.value, kafka_ts))
        readings.append((record.event_id, json.loads(record.value), kafka_ts))
    # every re-sent copy carries the same event: the first copy counts
    send_stamped(p, stamped)

    expected: dict[tuple[datetime, str], dict] = defaultdict(lambda: {"n": 0, "sensors": set(), "t": [], "h": [],
                                                                       "status": defaultdict(int)})
    for event_id, event, kafka_ts in readings:
        if event_id in seen:
            continue
        seen.add(event_id)
        at = datetime.fromisoformat(event["event_time"].replace("Z", "+00:00"))
        hour = at.replace(minute=0, second=0, microsecond=0)
        if kafka_ts >= (hour + timedelta(hours=1 + LATENESS_H)).timestamp():
            continue
        e = expected[(hour, event["city"])]
        e["n"] += 1
        e["sensors"].add(event["sensor_id"])
        e["t"].append(event["temperature_c"])
        e["h"].append(event["humidity_pct"])
        e["status"][status_of(event["temperature_c"], event["humidity_pct"])] += 1
    assert {hour for hour, _ in expected} == {h0, h0 + timedelta(hours=1), h0 + timedelta(hours=2)}

    assert p.drain(lake) == 0  # the stream lands the topic in bronze (and commits its offsets)

    conf = {"bronze_path": p.path("bronze"), "pg_schema": p.schema, "topic": p.topic, "query_name": p.name,
            "recompute": "changed"}
    for hour in range(3):  # the backfill: one run per hour, as `airflow backfill create` makes them
        assert dag_runner.test("iot_aggregates", h0 + timedelta(hours=hour + 1), conf) == "success"

    windows = p.query("select window_start_utc, window_end_utc from {schema}.aggregate_runs order by run_id")
    assert windows == [(h0 + timedelta(hours=k - LATENESS_H), h0 + timedelta(hours=k + 1)) for k in range(3)]
    rows = p.query("select hour_start_utc, city, readings, sensors, temperature_min_c, temperature_max_c, "
                   "temperature_mean_c, humidity_min_pct, humidity_max_pct, ok_readings, warning_readings, "
                   "critical_readings from {schema}.sensor_readings_hourly_city")
    assert len(rows) == len(expected)
    for hour, city, n, sensors, t_min, t_max, t_mean, h_min, h_max, ok, warning, critical in rows:
        e = expected[(hour, city)]
        assert (n, sensors) == (e["n"], len(e["sensors"])), (hour, city)
        assert (t_min, t_max, h_min, h_max) == (min(e["t"]), max(e["t"]), min(e["h"]), max(e["h"]))
        exact_mean = sum(Decimal(str(t)) for t in e["t"]) / len(e["t"])
        assert abs(t_mean - exact_mean) <= Decimal("0.0005")
        assert (ok, warning, critical) == (e["status"]["OK"], e["status"]["WARNING"], e["status"]["CRITICAL"])
    per_sensor = p.query("select hour_start_utc, count(*), sum(readings) from {schema}.sensor_readings_hourly_sensor "
                         "group by 1 order by 1")
    for hour, sensors, n in per_sensor:
        mine = [e for (h, _), e in expected.items() if h == hour]
        assert (sensors, n) == (len(set().union(*(e["sensors"] for e in mine))), sum(e["n"] for e in mine))

    # incremental: the first run computed its three hours, the next two only their own hour
    # (nothing reached the earlier ones since), each reading bronze from 5 minutes (the
    # contract's future skew) before its hour to its lateness's end
    def stamped_between(lo: timedelta, hi: timedelta) -> int:
        return sum((h0 + lo).timestamp() <= ts < (h0 + hi).timestamp() for _, _, ts in stamped)

    skew = timedelta(minutes=5)
    runs = p.query("select hours_replaced, bronze_rows_read from {schema}.aggregate_runs order by run_id")
    assert runs == [(3, stamped_between(timedelta(hours=-2) - skew, timedelta(hours=3))),
                    (1, stamped_between(timedelta(hours=1) - skew, timedelta(hours=4))),
                    (1, stamped_between(timedelta(hours=2) - skew, timedelta(hours=5)))]
    # each hour: every record stamped before the end of the last run that read it was read
    assert p.query("select hour_start_utc, complete_before from {schema}.aggregate_hours order by 1") == [
        (h0 + timedelta(hours=k), h0 + timedelta(hours=min(k + 3, 3))) for k in range(-LATENESS_H, 3)]

    # a rerun of hour 1 that recomputes everything gives identical rows
    city, sensor = table(p, "sensor_readings_hourly_city"), table(p, "sensor_readings_hourly_sensor")
    assert dag_runner.test("iot_aggregates", h0 + timedelta(hours=2), {**conf, "recompute": "all"}) == "success"
    assert (table(p, "sensor_readings_hourly_city"), table(p, "sensor_readings_hourly_sensor")) == (city, sensor)
    assert p.query("select hours_replaced from {schema}.aggregate_runs order by run_id desc limit 1") == [(3,)]

    # a late record of hour 2, within its lateness: the next hour's run computes hour 2 again
    # (and its own), not hour 1
    while (record := stream.next_record((h0 + timedelta(hours=2, minutes=30)).timestamp())).kind != VALID:
        pass
    late = json.loads(record.value)
    send_stamped(p, [(record.key, record.value, (h0 + timedelta(hours=3, minutes=30)).timestamp())])
    assert p.drain(lake) == 0
    readings_sql = "select hour_start_utc, city, readings from {schema}.sensor_readings_hourly_city"
    before = set(p.query(readings_sql))
    assert dag_runner.test("iot_aggregates", h0 + timedelta(hours=4), conf) == "success"
    assert p.query("select hours_replaced from {schema}.aggregate_runs order by run_id desc limit 1") == [(2,)]
    hour2 = h0 + timedelta(hours=2)
    n2 = expected[(hour2, late["city"])]["n"]
    after = set(p.query(readings_sql))
    assert after - before == {(hour2, late["city"], n2 + 1)}
    assert before - after == {(hour2, late["city"], n2)}


def test_a_window_with_no_bronze_table_or_no_rows_fails_and_keeps_the_aggregates(stack, lake, pipeline):
    """A typo in --bronze-path, or a window the lake no longer holds, must never replace the
    window's aggregates with nothing and call it a success."""
    from jobs.aggregates import AggregateSettings, NothingToAggregate, compute, stored_states
    from jobs.transform import Thresholds

    p = pipeline
    h = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    p.query(f"insert into {{schema}}.sensor_readings_hourly_city values ('{h.isoformat()}', 'Recife', 120, 4, 20.5, "
            "25.125, 31.5, 30.9, 40.0, 55.5, 70.0, 68.0, 100, 15, 5, 2)")
    before = table(p, "sensor_readings_hourly_city")
    settings = AggregateSettings(start=h, end=h + timedelta(hours=1), bronze_path=p.path("no-such-table"),
                                 pg_schema=p.schema, pg_connect=p.stack_connect(), thresholds=Thresholds(),
                                 lateness_hours=0, anomaly_delta_c=10.0)
    with pytest.raises(NothingToAggregate, match="no Delta table at .*no-such-table: check --bronze-path"):
        compute(lake, settings)
    # a schema without the job's tables (a typo, or a Docker volume older than the table)
    with pytest.raises(RuntimeError, match=r"no table no_such_schema\.aggregate_hours: check --pg-schema"):
        stored_states(dataclasses.replace(settings, pg_schema="no_such_schema"))

    # a real table with rows, but none in the window
    send_stamped(p, [(b"k", b"{}", (h + timedelta(hours=2)).timestamp())])
    assert p.drain(lake) == 0
    with pytest.raises(NothingToAggregate, match="no bronze rows in .* with Kafka timestamps"):
        compute(lake, dataclasses.replace(settings, bronze_path=p.path("bronze")))

    # the job itself: exit 1, and the aggregates and the run log are as they were
    result = subprocess.run(p.submit_args("aggregates", "--start", h.isoformat(), "--end",
                                          (h + timedelta(hours=1)).isoformat(), "--lateness-hours", "0",
                                          "--bronze-path", p.path("bronze-typo"), "--pg-schema", p.schema),
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr  # spark-submit hands the driver's stderr to stdout
    assert result.returncode == 1, output[-4000:]
    assert "Nothing was replaced" in output
    assert table(p, "sensor_readings_hourly_city") == before
    assert p.query("select count(*) from {schema}.aggregate_runs") == [(0,)]
