"""The stream's pure transformations: parse, validate (one test per rule and per bad-event
category of the producer), classify (every threshold boundary), and the sink projections."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from common.contract import FIELD_NAMES, MAX_PAYLOAD_BYTES
from common.env import Env
from jobs.micro_batch import summarize
from jobs.rules import RULE_NAMES, RULES
from jobs.schema import TYPED_SCHEMA_DDL
from jobs.transform import Thresholds, curated, parse, quarantine, to_bronze, validate
from producer.bad_events import BAD_CATEGORIES, make_bad_event
from producer.serialization import serialize
from producer.simulation import Fleet, format_event_time
from producer.stream import EventStream

KAFKA_TS = datetime(2026, 11, 26, 19, 0, 0, tzinfo=UTC)
GOOD = {
    "event_id": "6a17b9af-5b56-4643-9037-cdff7c240d49", "sensor_id": "f1-s0000", "seq": 1,
    "city": "São Paulo", "temperature_c": 26.54, "humidity_pct": 69.4,
    "event_time": "2026-11-26T18:59:59.674Z", "schema_version": 1,
}


def kafka_rows(spark, values: list[bytes | None]):
    rows = [(b"k", v, "t", 0, i, KAFKA_TS, 0) for i, v in enumerate(values)]
    return spark.createDataFrame(rows, "key binary, value binary, topic string, partition int, offset long, "
                                       "timestamp timestamp, timestampType int")


def failed(spark, values: list[bytes | None]) -> list[list[str]]:
    return [r.failed_rules for r in validate(parse(kafka_rows(spark, values))).orderBy("offset").collect()]


def with_(**changes) -> bytes:
    event = {**GOOD, **changes}
    return serialize({k: v for k, v in event.items() if v is not DROP})


DROP = object()


def test_the_spark_schema_is_the_contract(spark):
    from pyspark.sql.types import StructType

    assert tuple(f.name for f in StructType.fromDDL(TYPED_SCHEMA_DDL).fields) == FIELD_NAMES
    assert TYPED_SCHEMA_DDL.startswith("event_id string, sensor_id string, seq bigint")


def test_a_good_event_fails_nothing(spark):
    assert failed(spark, [serialize(GOOD)]) == [[]]


def test_simulated_readings_all_pass(spark):
    stream = EventStream(Fleet(40, 3, "f"))
    now = KAFKA_TS.timestamp()
    values = [stream.next_record(now - 60 + i * 0.01).value for i in range(2000)]
    assert failed(spark, values) == [[]] * 2000


# ---- one test per rule -----------------------------------------------------------------------

RULE_CASES = {
    "payload_size": with_(notes="x" * MAX_PAYLOAD_BYTES),
    "valid_utf8": serialize(GOOD).replace(b"f1-s0000", b"f1-s\xff\xfe"),
    "json_object": b'{"event_id": "x"',
    "required_fields": with_(city=DROP),
    "field_types": with_(seq="1"),
    "event_id_uuid": with_(event_id="not-a-uuid"),
    "known_city": with_(city="Gotham"),
    "temperature_range": with_(temperature_c=70.01),
    "humidity_range": with_(humidity_pct=-0.1),
    "event_time_format": with_(event_time="2026-11-26 18:59:59"),
    "event_time_not_future": with_(event_time="2026-11-26T19:05:00.001Z"),
    "schema_version_supported": with_(schema_version=2),
}


def test_every_rule_has_a_case():
    assert set(RULE_CASES) == set(RULE_NAMES)


@pytest.fixture(scope="module")
def rule_results(spark):
    """Every rule's case, validated in one Spark job."""
    return dict(zip(RULE_CASES, failed(spark, list(RULE_CASES.values())), strict=True))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_each_rule_alone(rule_results, rule):
    assert rule_results[rule] == [rule]


def test_rules_are_declared_as_data():
    for rule in RULES:
        assert rule.name
        assert rule.description
        assert callable(rule.fails)
    assert len(set(RULE_NAMES)) == len(RULES)


EDGE_CASES = [
    (None, ["json_object"]),                       # a tombstone
    (b"", ["json_object"]),
    (b"[1, 2]", ["json_object"]),
    (b'"just a string"', ["json_object"]),
    (b"not json at all", ["json_object"]),
    (with_(temperature_c=None), ["required_fields"]),   # present but null
    (with_(temperature_c="hot", city="Gotham"), ["field_types", "known_city"]),
    (with_(event_time="2026-11-26T18:59:59.674"), ["event_time_format"]),   # no offset
    (with_(event_time="2026-11-26T15:59:59-03:00"), []),                    # another offset
    (with_(event_time="2026-11-26T18:59:59Z"), []),                         # no milliseconds
    (with_(event_time="2026-11-26T19:05:00.000Z"), []),                     # exactly the tolerance
    (with_(temperature_c=70, humidity_pct=100), []),
    (with_(temperature_c=-50, humidity_pct=0), []),
    (with_(temperature_c=-50.01), ["temperature_range"]),
    (with_(humidity_pct=100.01), ["humidity_range"]),
    (with_(seq=1.5), ["field_types"]),
    (with_(schema_version="1"), ["field_types"]),
    (with_(event_id="6A17B9AF-5B56-4643-9037-CDFF7C240D49"), []),
    (with_(extra_field="ignored"), []),
]


@pytest.fixture(scope="module")
def edge_results(spark):
    """Every edge case, validated in one Spark job."""
    return failed(spark, [value for value, _ in EDGE_CASES])


@pytest.mark.parametrize("index", range(len(EDGE_CASES)))
def test_edge_cases(edge_results, index):
    value, rules = EDGE_CASES[index]
    assert edge_results[index] == rules, value


# ---- one test per bad-event category of the producer -----------------------------------------

EXPECTED_FOR_CATEGORY = {
    "malformed_json": {"json_object"},
    "wrong_type": {"field_types"},
    "unknown_city": {"known_city"},
    "future_timestamp": {"event_time_not_future"},
    "oversized": {"payload_size"},
    "invalid_utf8": {"valid_utf8"},
}


def _category_cases(category: str) -> tuple[list[bytes], list[list[str]]]:
    fleet = Fleet(8, 5, "f")
    ts = KAFKA_TS.timestamp() - 1
    values, expected = [], []
    for seed in range(30):
        template = fleet.template(ts, random.Random(seed))
        if category == "duplicate_event_id":
            values.append(serialize(template))  # a duplicate is a valid record
            expected.append([])
            continue
        value = make_bad_event(category, template, ts, random.Random(seed))
        values.append(value)
        if category == "missing_field":
            expected.append(["required_fields"])
        elif category == "out_of_range":
            event = json.loads(value)
            expected.append(["temperature_range"] if not -50 <= event["temperature_c"] <= 70 else ["humidity_range"])
        else:
            expected.append(sorted(EXPECTED_FOR_CATEGORY[category]))
    return values, expected


@pytest.fixture(scope="module")
def category_results(spark):
    """30 events of every bad category, validated in one Spark job."""
    cases = {c: _category_cases(c) for c in BAD_CATEGORIES}
    results = failed(spark, [v for values, _ in cases.values() for v in values])
    out, i = {}, 0
    for category, (values, expected) in cases.items():
        out[category] = (results[i:i + len(values)], expected)
        i += len(values)
    return out


@pytest.mark.parametrize("category", BAD_CATEGORIES)
def test_each_bad_category_fails_exactly_its_rule(category_results, category):
    got, expected = category_results[category]
    assert got == expected


# ---- classification --------------------------------------------------------------------------

BOUNDARIES = [
    (40.0, 50, "CRITICAL"), (39.99, 50, "WARNING"), (35.0, 50, "WARNING"), (34.99, 50, "OK"),
    (0.0, 50, "CRITICAL"), (0.01, 50, "WARNING"), (5.0, 50, "WARNING"), (5.01, 50, "OK"),
    (20, 14.99, "CRITICAL"), (20, 15.0, "WARNING"), (20, 29.99, "WARNING"), (20, 30.0, "OK"),
    (20, 90.0, "OK"), (20, 90.01, "WARNING"), (45, 10, "CRITICAL"), (36, 95, "WARNING"),
]


@pytest.fixture(scope="module")
def boundary_statuses(spark):
    """The status of every boundary case, classified in one Spark job."""
    values = [with_(temperature_c=t, humidity_pct=h) for t, h, _ in BOUNDARIES]
    rows = curated(validate(parse(kafka_rows(spark, values))), Thresholds()).orderBy("kafka_offset")
    return [r.status for r in rows.collect()]


@pytest.mark.parametrize("index", range(len(BOUNDARIES)))
def test_status_boundaries_with_default_thresholds(boundary_statuses, index):
    temperature, humidity, status = BOUNDARIES[index]
    assert boundary_statuses[index] == status, (temperature, humidity)


def test_thresholds_come_from_the_environment(spark):
    thresholds = Thresholds.from_env(Env({"STATUS_WARNING_TEMP_HIGH_C": "30", "STATUS_CRITICAL_TEMP_HIGH_C": "33"}))
    rows = validate(parse(kafka_rows(spark, [with_(temperature_c=t) for t in (29.9, 30, 33)])))
    assert [r.status for r in curated(rows, thresholds).orderBy("kafka_offset").collect()] == [
        "OK", "WARNING", "CRITICAL"]


def test_inconsistent_thresholds_are_refused():
    with pytest.raises(ValueError, match="status thresholds must satisfy"):
        Thresholds(warning_temp_high_c=45.0)


# ---- projections -----------------------------------------------------------------------------

def test_curated_row_is_typed_and_utc(spark):
    rows = validate(parse(kafka_rows(spark, [serialize(GOOD), b"junk"])))
    out = curated(rows, Thresholds()).collect()
    assert len(out) == 1
    row = out[0].asDict()
    assert row == {
        "event_id": GOOD["event_id"], "sensor_id": "f1-s0000", "seq": 1, "city": "São Paulo",
        "temperature_c": 26.54, "humidity_pct": 69.4, "status": "OK",
        "event_time": datetime(2026, 11, 26, 18, 59, 59, 674000),  # session time zone UTC
        "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": 0,
    }


def test_quarantine_keeps_raw_value_coordinates_and_reasons(spark):
    bad_utf8 = RULE_CASES["valid_utf8"]
    rows = validate(parse(kafka_rows(spark, [serialize(GOOD), b"{oops", bad_utf8])))
    out = quarantine(rows).orderBy("offset").collect()
    assert [(r.offset, r.value, r.value_text, r.failed_rules) for r in out] == [
        (1, b"{oops", "{oops", ["json_object"]),
        (2, bad_utf8, None, ["valid_utf8"]),
    ]
    assert {str(r.kafka_date) for r in out} == {"2026-11-26"}


def test_bronze_keeps_every_record_as_received(spark):
    values = [serialize(GOOD), b"{oops", None]
    out = to_bronze(kafka_rows(spark, values)).orderBy("offset").collect()
    assert [r.value for r in out] == values
    assert [r.offset for r in out] == [0, 1, 2]
    assert {str(r.kafka_date) for r in out} == {"2026-11-26"}


def test_bronze_and_quarantine_rows_carry_the_time_they_were_written(spark):
    rows = validate(parse(kafka_rows(spark, [serialize(GOOD), b"{oops"])))
    before = datetime.now(UTC).replace(microsecond=0)
    bronze = to_bronze(kafka_rows(spark, [serialize(GOOD)])).collect()
    quarantined = quarantine(rows).collect()
    after = datetime.now(UTC)
    assert len(bronze) == len(quarantined) == 1
    assert before <= bronze[0].ingest_time.astimezone(UTC) <= after
    assert before <= quarantined[0].quarantined_at.astimezone(UTC) <= after


def test_a_micro_batch_compiles_no_new_code_after_the_first(spark):
    # A literal that changes per batch (current_timestamp() is one) is written into the
    # generated Java source: every batch then paid Janino compilations and JIT work on new
    # classes, a fifth of the stream's CPU. The second batch must reuse the first one's code.
    from jobs.micro_batch import curated_csv_column

    compilations = spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()

    def one_batch(first_offset: int) -> None:
        rows = [(b"k", v, "t", 0, first_offset + i, KAFKA_TS, 0)
                for i, v in enumerate([serialize(GOOD), b"{oops", with_(seq=first_offset)])]
        batch = spark.createDataFrame(rows, kafka_rows(spark, []).schema)
        checked = validate(parse(batch))
        checked.select("partition", "offset", "failed_rules", curated_csv_column(Thresholds())).collect()
        to_bronze(batch).collect()
        quarantine(checked).collect()

    one_batch(0)
    before = compilations.getCount()
    one_batch(1000)
    assert compilations.getCount() - before == 0


def test_a_micro_batch_builds_its_plans_with_few_calls_to_the_jvm(spark, monkeypatch):
    # Every PySpark call that builds an expression is a round trip to the JVM: the stream's
    # plans took about 2,400 a batch (250 to 350 ms) before its Column expressions were built
    # once (transform.built_once). Now a batch's plans take a handful: one per DataFrame step.
    import collections

    import py4j.clientserver

    from jobs.micro_batch import batch_summary_columns

    def plans(batch) -> None:
        checked = validate(parse(batch))
        checked.select(*batch_summary_columns(Thresholds()))
        to_bronze(batch)
        quarantine(checked)

    plans(kafka_rows(spark, [serialize(GOOD)]))  # the first batch builds them
    batch = kafka_rows(spark, [serialize(GOOD), b"{oops"])
    calls = []
    send = py4j.clientserver.ClientServerConnection.send_command

    def counting(self, command):
        if not command.startswith(("g\n", "m\n")):  # py4j releasing objects Python collected
            calls.append(command.split("\n", 3)[:3])
        return send(self, command)

    monkeypatch.setattr(py4j.clientserver.ClientServerConnection, "send_command", counting)
    plans(batch)
    monkeypatch.undo()
    assert len(calls) < 100, collections.Counter(f"{c[0]} {c[2]}" for c in calls).most_common(10)


def rule_failure_counts(checked) -> dict[str, int]:
    """For every rule, how many records failed it (the stream's summary, without the rows)."""
    from pyspark.sql import functions as F

    rows = checked.select("partition", "offset", "failed_rules", F.lit(None).alias("curated_csv")).collect()
    return summarize(rows).rule_failures


def test_rule_failure_counts(spark):
    values = [serialize(GOOD), b"{", b"[]", with_(city="Gotham"), with_(city="Gotham", seq="x")]
    counts = rule_failure_counts(validate(parse(kafka_rows(spark, values))))
    assert counts == {name: 0 for name in RULE_NAMES} | {"json_object": 2, "known_city": 2, "field_types": 1}


def test_event_time_is_formatted_like_the_contract():
    assert format_event_time(KAFKA_TS.timestamp()) == "2026-11-26T19:00:00.000Z"


def test_summarize_counts_rules_offsets_and_valid_rows():
    from pyspark.sql import Row

    from jobs.micro_batch import summarize

    record = Row("partition", "offset", "failed_rules", "curated_csv")
    rows = [record(0, 10, [], "a"), record(0, 11, ["json_object"], None),
            record(1, 5, ["known_city", "field_types"], None), record(1, 7, [], "b"), record(0, 9, [], "c")]
    batch = summarize(rows)
    assert (batch.rows_in, batch.quarantined, batch.valid) == (5, 2, 3)
    assert batch.next_offsets == {0: 12, 1: 8}
    assert {k: v for k, v in batch.rule_failures.items() if v} == {"json_object": 1, "known_city": 1, "field_types": 1}
    assert batch.curated_csv == ["a", "b", "c"]


def test_delta_commit_marker_names_query_and_batch():
    from jobs.sinks import batch_marker

    assert batch_marker("5f0c-query", 42) == "5f0c-query:42"
