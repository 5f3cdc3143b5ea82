"""Hourly aggregates' pure transformations and argument handling, on hand-made bronze rows
whose expected figures are worked out by hand below."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.aggregates import hour_window, parse_instant
from jobs.hourly import (
    bronze_as_kafka,
    hourly_city_aggregates,
    hourly_readings,
    hourly_sensor_aggregates,
    with_anomalies,
)
from jobs.transform import Thresholds, parse, validate
from producer.serialization import serialize

H = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def event(sensor: str, city: str, temp: float, hum: float, at: datetime, event_id: str | None = None) -> bytes:
    return serialize({"event_id": event_id or str(uuid.uuid4()), "sensor_id": sensor, "seq": 1, "city": city,
                      "temperature_c": temp, "humidity_pct": hum,
                      "event_time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                      "schema_version": 1})


def bronze(spark, records: list[tuple[bytes, datetime]]):
    rows = [(b"k", value, "t", 0, offset, kafka_ts, kafka_ts, kafka_ts.date())
            for offset, (value, kafka_ts) in enumerate(records)]
    return spark.createDataFrame(rows, "key binary, value binary, topic string, partition int, offset long, "
                                       "kafka_timestamp timestamp, ingest_time timestamp, kafka_date date")


def aggregate(spark, records, lateness_hours=2, delta=10.0):
    # (collected timestamps are naive local time, as PySpark returns them)
    readings = hourly_readings(validate(parse(bronze_as_kafka(bronze(spark, records)))), Thresholds(), lateness_hours)
    flagged = with_anomalies(readings, delta)
    city = {(r.hour_start_utc.astimezone(UTC), r.city): r.asDict()
            for r in hourly_city_aggregates(flagged).collect()}
    sensor = {(r.hour_start_utc.astimezone(UTC), r.sensor_id): r.asDict()
              for r in hourly_sensor_aggregates(flagged).collect()}
    return city, sensor


def at(minutes: float) -> datetime:
    return H + timedelta(minutes=minutes)


def test_city_and_sensor_figures_are_exact(spark):
    # Recife, hour H: sensor a: 20, 22, 24, 26, 50 (50 is 26 above a's median 24: an anomaly);
    # sensor b: 30. Humidity 50, 60, 70, 80, 10, 90.
    records = [
        (event("a", "Recife", 20.0, 50.0, at(1)), at(1)),
        (event("a", "Recife", 22.0, 60.0, at(2)), at(2)),
        (event("a", "Recife", 24.0, 70.0, at(3)), at(3)),
        (event("a", "Recife", 26.0, 80.0, at(4)), at(4)),
        (event("a", "Recife", 50.0, 10.0, at(5)), at(5)),
        (event("b", "Recife", 30.0, 90.0, at(6)), at(6)),
    ]
    city, sensor = aggregate(spark, records)
    r = city[(H, "Recife")]
    assert (r["readings"], r["sensors"]) == (6, 2)
    assert (r["temperature_min_c"], r["temperature_max_c"]) == (20.0, 50.0)
    assert r["temperature_mean_c"] == Decimal("28.667")  # 172 / 6
    # exact p95 with linear interpolation over 20,22,24,26,30,50: rank 0.95*5 = 4.75 -> 30 + 0.75*20
    assert r["temperature_p95_c"] == pytest.approx(45.0)
    assert (r["humidity_min_pct"], r["humidity_max_pct"]) == (10.0, 90.0)
    assert r["humidity_mean_pct"] == Decimal("60.000")
    # humidity 10,50,60,70,80,90: rank 4.75 -> 80 + 0.75*10
    assert r["humidity_p95_pct"] == pytest.approx(87.5)
    # statuses with the default thresholds: 50 °C / 10 % CRITICAL; 30 °C with 90 % OK (90 is not > 90);
    # 20/50, 22/60, 24/70, 26/80 OK
    assert (r["ok_readings"], r["warning_readings"], r["critical_readings"]) == (5, 0, 1)
    assert r["anomalies"] == 1
    a = sensor[(H, "a")]
    assert (a["city"], a["readings"], a["temperature_mean_c"], a["anomalies"]) == ("Recife", 5, Decimal("28.400"), 1)
    b = sensor[(H, "b")]
    assert (b["readings"], b["temperature_p95_c"], b["anomalies"]) == (1, 30.0, 0)


def test_duplicates_count_once_and_invalid_records_not_at_all(spark):
    same = str(uuid.uuid4())
    records = [
        (event("a", "Salvador", 25.0, 70.0, at(1), same), at(1)),
        (event("a", "Salvador", 25.0, 70.0, at(1), same), at(20)),   # re-sent: new offset
        (event("a", "Salvador", 99.0, 70.0, at(2)), at(2)),          # out of range: invalid
        (b"{not json", at(3)),
    ]
    city, _ = aggregate(spark, records)
    assert city[(H, "Salvador")]["readings"] == 1


def test_lateness_boundary_and_hour_boundaries(spark):
    records = [
        (event("a", "Curitiba", 18.0, 70.0, at(0)), at(0)),                       # first instant of H
        (event("a", "Curitiba", 18.0, 70.0, at(59.99)), at(60 + 120 - 0.001)),     # just inside lateness
        (event("a", "Curitiba", 18.0, 70.0, at(30)), at(60 + 120)),                # at the deadline: out
        (event("a", "Curitiba", 18.0, 70.0, at(60)), at(60)),                      # next hour
    ]
    city, _ = aggregate(spark, records, lateness_hours=2)
    assert city[(H, "Curitiba")]["readings"] == 2
    assert city[(H + timedelta(hours=1), "Curitiba")]["readings"] == 1
    city0, _ = aggregate(spark, records, lateness_hours=0)
    assert city0[(H, "Curitiba")]["readings"] == 1


def test_the_anomaly_threshold_is_strict(spark):
    records = [(event("a", "Recife", t, 70.0, at(i)), at(i)) for i, t in enumerate((20.0, 20.0, 20.0, 30.0, 30.01))]
    city, _ = aggregate(spark, records, delta=10.0)
    assert city[(H, "Recife")]["anomalies"] == 1  # |30.01 - 20| > 10, |30 - 20| is not


def test_the_window_covers_the_lateness_hours_before_the_interval():
    assert hour_window(H, H + timedelta(hours=1), 2) == (H - timedelta(hours=2), H + timedelta(hours=1))
    assert hour_window(H, H + timedelta(hours=3), 0) == (H, H + timedelta(hours=3))


@pytest.mark.parametrize(("start", "end", "message"), [
    (H + timedelta(minutes=5), H + timedelta(hours=1), "whole hours"),
    (H, H, "end must be after start"),
    (H.replace(tzinfo=None), H + timedelta(hours=1), "UTC offset"),
])
def test_bad_windows_are_refused(start, end, message):
    with pytest.raises(ValueError, match=message):
        hour_window(start, end, 2)


def test_instants_need_an_offset():
    assert parse_instant("2026-11-20T10:00:00Z") == H
    assert parse_instant("2026-11-20T07:00:00-03:00") == H
    with pytest.raises(argparse.ArgumentTypeError, match="no UTC offset"):
        parse_instant("2026-11-20T10:00:00")


def test_the_cli_names_the_bad_argument(capsys, monkeypatch):
    from jobs.aggregates import main

    monkeypatch.setenv("PIPELINE_DB_PASSWORD", "unused")
    with pytest.raises(SystemExit) as exit_info:
        main(["--start", "2026-11-20T10:30:00Z", "--end", "2026-11-20T11:00:00Z"])
    assert exit_info.value.code == 2
    assert "--start/--end: start and end must be whole hours" in capsys.readouterr().err


def test_a_known_hour_is_touched_only_by_a_valid_record_new_to_it(spark):
    """An hour computed before (HourState) is computed again only for a valid record of that
    hour stamped at or after its complete_before, before its lateness ends, and past the
    offset read in its Kafka partition."""
    from jobs.aggregates import AggregateSettings, HourState, scan_start, touched_hours

    settings = AggregateSettings(start=H, end=H + timedelta(hours=1), bronze_path="s3a://b/bronze", pg_schema="s",
                                 pg_connect={}, thresholds=Thresholds(), lateness_hours=2, anomaly_delta_c=10.0)
    cb = H + timedelta(hours=1)
    known = {H: HourState(settings.inputs, cb, {"t:0": 10})}

    def touched(valid: bool, event_at: datetime, kafka_ts: datetime, partition: int, offset: int) -> set:
        records = spark.createDataFrame(
            [(valid, event_at, kafka_ts, "t", partition, offset)],
            "_valid boolean, event_time timestamp, kafka_timestamp timestamp, kafka_topic string, "
            "kafka_partition int, kafka_offset long")
        return touched_hours(records, settings, known)

    assert touched(True, at(30), cb, 0, 11) == {H}
    assert touched(True, at(30), cb, 1, 0) == {H}  # a partition it never read
    assert touched(True, at(30), cb, 0, 10) == set()  # read already
    assert touched(True, at(30), cb - timedelta(seconds=1), 0, 11) == set()  # stamped before: read already
    assert touched(True, at(30), H + timedelta(hours=3), 0, 11) == set()  # after its lateness: does not count
    assert touched(True, at(90), cb, 0, 11) == set()  # another hour's
    assert touched(False, at(30), cb, 0, 11) == set()  # invalid: quarantined, not counted
    # the read starts at the earliest of: 5 minutes (the future skew) before each hour to
    # compute, and each known hour's complete_before
    assert scan_start([H + timedelta(hours=1)], known) == H + timedelta(minutes=55)
    assert scan_start([], known) == cb
    assert scan_start([H - timedelta(hours=1)], known) == H - timedelta(minutes=65)


def test_an_hour_recorded_under_other_inputs_is_not_known():
    from jobs.aggregates import AggregateSettings

    base = AggregateSettings(start=H, end=H + timedelta(hours=1), bronze_path="s3a://b/bronze", pg_schema="s",
                             pg_connect={}, thresholds=Thresholds(), lateness_hours=2, anomaly_delta_c=10.0)
    assert base.inputs == AggregateSettings(**{**base.__dict__, "bronze_path": "s3://B//bronze/"}).inputs
    for change in ({"lateness_hours": 1}, {"anomaly_delta_c": 9.0}, {"bronze_path": "s3a://b/other"},
                   {"thresholds": Thresholds(warning_temp_high_c=34.0)}):
        assert AggregateSettings(**{**base.__dict__, **change}).inputs != base.inputs, change
