"""The simulator's logic, with no broker: determinism, climate, anomalies, bad events."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict

import pytest

from common.contract import (
    CITIES,
    CITY_NAMES,
    EVENT_FIELDS,
    FIELD_NAMES,
    HUMIDITY_RANGE_PCT,
    MAX_PAYLOAD_BYTES,
    TEMPERATURE_RANGE_C,
)
from producer.bad_events import BAD_CATEGORIES, UNKNOWN_CITY, make_bad_event
from producer.serialization import serialize, serialize_reading
from producer.simulation import AnomalyRates, Fleet, diurnal, format_event_time
from producer.stream import VALID, EventStream

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z
NO_ANOMALIES = AnomalyRates(0.0, 0.0, 0.0)
JSON_TYPES = {"string": str, "integer": int, "number": (int, float)}


def records(stream: EventStream, n: int, step: float = 0.01) -> list:
    return [stream.next_record(T0 + i * step) for i in range(n)]


def test_same_seed_gives_the_same_stream_and_another_seed_does_not():
    a = records(EventStream(Fleet(20, seed=42, fleet_id="f"), bad_rate=0.1), 3000)
    b = records(EventStream(Fleet(20, seed=42, fleet_id="f"), bad_rate=0.1), 3000)
    c = records(EventStream(Fleet(20, seed=43, fleet_id="f"), bad_rate=0.1), 3000)
    assert [(r.key, r.value, r.kind) for r in a] == [(r.key, r.value, r.kind) for r in b]
    assert [r.value for r in a] != [r.value for r in c]


def test_valid_readings_do_not_depend_on_the_bad_rate():
    # one timestamp for every slot: readings depend on time, and bad events shift the slots
    clean = [r.value for r in records(EventStream(Fleet(10, 5, "f"), bad_rate=0.0), 3000, step=0)]
    noisy = [r.value for r in records(EventStream(Fleet(10, 5, "f"), bad_rate=0.3), 3000, step=0)
             if r.kind == VALID]
    assert noisy == clean[: len(noisy)]


def test_events_follow_the_contract_field_by_field():
    for r in records(EventStream(Fleet(16, 1, "f")), 500):
        event = json.loads(r.value)
        assert tuple(event) == FIELD_NAMES
        for f in EVENT_FIELDS:
            assert isinstance(event[f.name], JSON_TYPES[f.json_type]), f.name
        assert r.key == event["sensor_id"].encode()
        assert event["schema_version"] == 1
        assert event["event_time"].endswith("Z")


def test_event_time_is_utc_iso8601_with_milliseconds():
    assert format_event_time(1_795_000_000.123) == "2026-11-18T11:06:40.123Z"
    assert format_event_time(1_795_000_000.9996) == "2026-11-18T11:06:41.000Z"
    assert format_event_time(0) == "1970-01-01T00:00:00.000Z"


def test_fast_reading_serialization_equals_json():
    fleet = Fleet(64, seed=13, fleet_id="Fleet_id-9", anomalies=AnomalyRates(0.05, 0.05, 0.05))
    for i in range(20_000):
        event = fleet.next_reading(T0 + i * 3.7)
        assert serialize_reading(event) == serialize(event)
    for city in CITY_NAMES:  # the template writes cities unescaped
        assert json.dumps(city, ensure_ascii=False) == f'"{city}"'


def test_fleet_id_must_be_safe_to_embed():
    with pytest.raises(ValueError, match="fleet id must be 1-32 of"):
        Fleet(1, 1, 'bad"id')


def test_serialization_keeps_non_ascii_as_utf8():
    assert serialize({"city": "São Paulo"}) == '{"city":"São Paulo"}'.encode()
    with pytest.raises(ValueError, match="Out of range float"):
        serialize({"temperature_c": float("nan")})


def test_values_stay_within_each_citys_range_over_a_day():
    fleet = Fleet(80, seed=9, fleet_id="f", anomalies=NO_ANOMALIES)
    stream = EventStream(fleet)
    by_city = defaultdict(list)
    for i in range(80 * 96):  # every sensor every 15 minutes for a day
        event = json.loads(stream.next_record(T0 + (i // 80) * 900).value)
        by_city[event["city"]].append((event["temperature_c"], event["humidity_pct"]))
    assert set(by_city) == CITY_NAMES
    for city in CITIES:
        temps = [t for t, _ in by_city[city.name]]
        hums = [h for _, h in by_city[city.name]]
        # mean ± amplitude, plus bias (sd 0.8) and noise (sd 0.3) at 4 sd: 4.4 °C
        assert city.mean_temp_c - city.daily_amplitude_c - 4.4 <= min(temps), city.name
        assert max(temps) <= city.mean_temp_c + city.daily_amplitude_c + 4.4, city.name
        assert min(hums) >= 1.0
        assert max(hums) <= 100.0
        assert city.mean_humidity_pct - city.daily_humidity_amplitude_pct - 16 <= min(hums), city.name


def test_diurnal_cycle_peaks_mid_afternoon_local_time():
    assert diurnal(15.0) == 1.0
    assert diurnal(3.0) == -1.0
    assert math.isclose(diurnal(9.0), 0.0, abs_tol=1e-12)
    fleet = Fleet(80, seed=4, fleet_id="f", anomalies=NO_ANOMALIES)
    # All eight cities are UTC-3 (no daylight saving in Brazil since 2019).
    afternoon, night = T0 - (T0 % 86400) + 18 * 3600, T0 - (T0 % 86400) + 6 * 3600
    for city in CITIES:
        sensors = [s for s in fleet.sensors if s.city == city]
        warm = statistics.mean(fleet.values_at(s, afternoon)[0] for s in sensors for _ in range(20))
        cold = statistics.mean(fleet.values_at(s, night)[0] for s in sensors for _ in range(20))
        # the difference is twice the city's amplitude (biases cancel); noise averages out
        assert abs((warm - cold) - 2 * city.daily_amplitude_c) < 0.2, city.name


@pytest.mark.parametrize("kind", ["spike", "stuck", "dropout"])
def test_anomaly_rates_match_their_settings(kind):
    """A rate is the chance per reading that is not already inside that anomaly."""
    rates = {"spike": 0.0, "stuck": 0.0, "dropout": 0.0} | {kind: 0.005}
    fleet = Fleet(100, seed=11, fleet_id="f", anomalies=AnomalyRates(**rates))
    n = 100_000
    records(EventStream(fleet), n)
    c = fleet.counts
    started, eligible = {
        "spike": (c.spikes, n - (c.spiked_readings - c.spikes)),
        "stuck": (c.stuck, n - c.stuck_readings),
        "dropout": (c.dropouts, n),
    }[kind]
    p = 0.005
    sigma = math.sqrt(eligible * p * (1 - p))
    # binomial count within 4 standard deviations of eligible * p
    assert abs(started - eligible * p) < 4 * sigma, (started, eligible)
    assert eligible > n * 0.7


def test_heat_spike_raises_temperature_by_12_to_22_degrees():
    fleet = Fleet(1, seed=2, fleet_id="f", anomalies=AnomalyRates(spike=1.0, stuck=0.0, dropout=0.0))
    base = Fleet(1, seed=2, fleet_id="f", anomalies=NO_ANOMALIES)
    spiked = json.loads(EventStream(fleet).next_record(T0).value)["temperature_c"]
    normal = base.values_at(base.sensors[0], T0)[0]
    assert 12.0 - 1.5 <= spiked - normal <= 22.0 + 1.5


def test_stuck_sensor_repeats_its_values():
    fleet = Fleet(1, seed=3, fleet_id="f", anomalies=AnomalyRates(spike=0.0, stuck=1.0, dropout=0.0))
    events = [json.loads(r.value) for r in records(EventStream(fleet), 12)]
    values = {(e["temperature_c"], e["humidity_pct"]) for e in events[:11]}
    assert len(values) == 1
    assert [e["seq"] for e in events] == list(range(1, 13))


def test_seq_is_gap_free_per_sensor_even_with_dropouts():
    fleet = Fleet(30, seed=6, fleet_id="f", anomalies=AnomalyRates(spike=0.0, stuck=0.0, dropout=0.01))
    seqs = defaultdict(list)
    for r in records(EventStream(fleet, bad_rate=0.05), 20_000):
        if r.kind == VALID:
            event = json.loads(r.value)
            seqs[event["sensor_id"]].append(event["seq"])
    assert fleet.counts.dropouts > 0
    assert fleet.counts.skipped_turns > 0
    assert len(seqs) == 30
    for sensor, values in seqs.items():
        assert values == list(range(1, len(values) + 1)), sensor


def test_fleets_with_distinct_ids_never_share_a_sensor():
    a = {s.sensor_id for s in Fleet(100, 1, "fa").sensors}
    b = {s.sensor_id for s in Fleet(100, 1, "fb").sensors}
    assert len(a) == len(b) == 100
    assert not a & b


def test_bad_rate_and_categories_are_drawn_evenly():
    stream = EventStream(Fleet(20, 8, "f"), bad_rate=0.1)
    n = 45_000
    records(stream, n)
    bad = {c: stream.counts[c] for c in BAD_CATEGORIES}
    total_bad = sum(bad.values())
    assert abs(total_bad - n * 0.1) < 4 * math.sqrt(n * 0.1 * 0.9)
    expected = total_bad / len(BAD_CATEGORIES)
    for category, count in bad.items():
        assert abs(count - expected) < 4 * math.sqrt(expected), category
    assert stream.counts[VALID] + total_bad == n


def _bad(category: str) -> tuple[bytes, dict]:
    import random

    fleet = Fleet(8, 12, "f")
    template = fleet.template(T0, random.Random(1))
    return make_bad_event(category, template, T0, random.Random(2)), template


def _valid_except(event: dict, *skip: str) -> None:
    """Assert every field but `skip` is present and valid."""
    for f in EVENT_FIELDS:
        if f.name in skip:
            continue
        assert isinstance(event[f.name], JSON_TYPES[f.json_type]), f.name
    if "city" not in skip:
        assert event["city"] in CITY_NAMES
    if "temperature_c" not in skip:
        assert TEMPERATURE_RANGE_C[0] <= event["temperature_c"] <= TEMPERATURE_RANGE_C[1]
    if "humidity_pct" not in skip:
        assert HUMIDITY_RANGE_PCT[0] <= event["humidity_pct"] <= HUMIDITY_RANGE_PCT[1]


def test_bad_malformed_json_does_not_parse():
    value, _ = _bad("malformed_json")
    value.decode("utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(value)


def test_bad_wrong_type_has_a_string_temperature():
    value, _ = _bad("wrong_type")
    event = json.loads(value)
    assert event["temperature_c"] == "hot"
    _valid_except(event, "temperature_c")


def test_bad_missing_field_lacks_exactly_one_required_field():
    import random

    fleet = Fleet(8, 12, "f")
    missing = set()
    for seed in range(60):
        template = fleet.template(T0, random.Random(seed))
        value = make_bad_event("missing_field", template, T0, random.Random(seed))
        event = json.loads(value)
        assert len(set(FIELD_NAMES) - set(event)) == 1
        missing |= set(FIELD_NAMES) - set(event)
    assert missing == set(FIELD_NAMES)


def test_bad_out_of_range_breaks_one_range():
    import random

    fleet = Fleet(8, 12, "f")
    kinds = set()
    for seed in range(40):
        event = json.loads(make_bad_event("out_of_range", fleet.template(T0, random.Random(seed)), T0,
                                          random.Random(seed)))
        temp_bad = not TEMPERATURE_RANGE_C[0] <= event["temperature_c"] <= TEMPERATURE_RANGE_C[1]
        hum_bad = not HUMIDITY_RANGE_PCT[0] <= event["humidity_pct"] <= HUMIDITY_RANGE_PCT[1]
        assert temp_bad != hum_bad
        kinds.add("temperature" if temp_bad else "humidity")
    assert kinds == {"temperature", "humidity"}


def test_bad_unknown_city():
    value, _ = _bad("unknown_city")
    event = json.loads(value)
    assert event["city"] == UNKNOWN_CITY
    assert UNKNOWN_CITY not in CITY_NAMES
    _valid_except(event, "city")


def test_bad_future_timestamp_is_a_day_ahead():
    value, template = _bad("future_timestamp")
    event = json.loads(value)
    assert event["event_time"] == format_event_time(T0 + 86_400)
    _valid_except(event)


def test_bad_oversized_exceeds_the_payload_limit():
    value, _ = _bad("oversized")
    assert len(value) > MAX_PAYLOAD_BYTES
    _valid_except(json.loads(value))


def test_bad_invalid_utf8_does_not_decode():
    value, template = _bad("invalid_utf8")
    with pytest.raises(UnicodeDecodeError):
        value.decode("utf-8")
    assert template["sensor_id"].encode() + b"\xff\xfe\xc3" in value


def test_bad_duplicate_resends_the_last_valid_reading_verbatim():
    stream = EventStream(Fleet(8, 3, "f"), bad_rate=1.0, categories=("duplicate_event_id",))
    first = stream.next_record(T0)  # nothing to duplicate yet: a valid reading
    second = stream.next_record(T0 + 1)
    assert first.kind == VALID
    assert second.kind == "duplicate_event_id"
    assert second.value == first.value
    assert second.key == first.key
    assert second.event_id == first.event_id


def test_unknown_bad_category_is_named():
    with pytest.raises(ValueError, match="unknown bad-event categories \\['bogus'\\]"):
        EventStream(Fleet(1, 1, "f"), 0.1, ("bogus",))


def test_fleet_metadata_is_seeded_and_near_its_city():
    a, b = Fleet(16, 5, "f").metadata(), Fleet(16, 5, "f").metadata()
    assert a == b
    for meta in a:
        city = next(c for c in CITIES if c.name == meta.city)
        assert abs(meta.lat - city.lat) <= 0.08
        assert abs(meta.lon - city.lon) <= 0.08
        assert meta.serial.startswith("SN-")


class _StopAfter:
    """A sink that stops the run after `n` sends; `acks` says whether Kafka acknowledges them."""

    def __init__(self, stopper, n: int, acks: bool) -> None:
        self.stopper, self.n, self.acks = stopper, n, acks
        self.sent = self.acked = self.failed = 0

    def send(self, key: bytes, value: bytes) -> None:
        self.sent += 1
        self.acked += self.acks
        if self.sent >= self.n:
            self.stopper.signal = 15

    def flush(self, timeout_s: float) -> bool:
        return True


@pytest.mark.parametrize(("acks", "touched"), [(True, True), (False, False)])
def test_heartbeat_file_is_touched_only_when_kafka_acknowledged_records(tmp_path, acks, touched):
    from common.env import Env
    from producer.cli import Stopper, build_parser, run

    heartbeat = tmp_path / "heartbeat"
    args = build_parser(Env({})).parse_args(
        ["--rate", "0", "--stats-interval", "0.000001", "--heartbeat-file", str(heartbeat)])
    stopper = Stopper()
    summary = run(args, _StopAfter(stopper, 2000, acks), EventStream(Fleet(5, 1, "hb")), stopper)
    assert summary["sent"] == 2000
    assert heartbeat.exists() is touched


@pytest.mark.parametrize(("argv", "shown"), [
    (["--duration", "2.5", "--rate", "2000"], "| 3/3 s ["),   # whole seconds, the fraction rounded up
    (["--count", "3000", "--rate", "0"], "| 3000/3000 ["),
])
def test_the_progress_bar_counts_whole_seconds_or_events(argv, shown, capsys, monkeypatch):
    # it printed raw float seconds before ("221.86344115500015/540.0")
    from common.env import Env
    from producer.cli import Stopper, build_parser, run

    class Clock:  # the run's clock: the pacer's sleeps move it, so the 2.5 s run takes no time
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

        def time(self) -> float:
            return 1_795_000_000 + self.now

        def sleep(self, seconds: float) -> None:
            self.now += seconds

    monkeypatch.setattr("producer.cli.time", Clock())
    args = build_parser(Env({})).parse_args(argv)
    stopper = Stopper()
    summary = run(args, _StopAfter(stopper, 10**9, True), EventStream(Fleet(5, 1, "pb")), stopper)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert shown in bar, bar
    assert not re.search(r"\d\.\d+/", bar), bar
    assert summary["sent"] == (3000 if "--count" in argv else summary["sent"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--rate", "nan"], "--rate must be a finite number, got 'nan'"),
    (["--rate", "inf"], "--rate must be a finite number, got 'inf'"),
    (["--rate", "-1"], "--rate must be within [0, 1e+06], got '-1'"),
    (["--rate", "1e12"], "--rate must be within [0, 1e+06]"),
    (["--duration", "nan"], "--duration must be a finite number"),
    (["--duration=-inf"], "--duration must be a finite number"),
    (["--duration", "1e30"], "--duration must be within [0, 3.16224e+07]"),
    (["--count", "0"], "--count must be within [1, 1e+10], got '0'"),
    (["--count", "99999999999999999999"], "--count must be within [1, 1e+10]"),
    (["--count", "1.5"], "--count must be a whole number, got '1.5'"),
    (["--sensors", "1000000000"], "--sensors must be within [1, 100000]"),
    (["--sensors", "nan"], "--sensors must be a whole number, got 'nan'"),
    (["--seed", "1e3"], "--seed must be a whole number"),
    (["--seed", str(2**64)], "--seed must be within"),
    (["--start-time", "nan"], "--start-time must be ISO-8601"),
    (["--start-time", "9999-12-31T00:00:00Z"], "--start-time must be from 1970 to before 2100"),
    (["--start-time", "0001-01-01T00:00:00+00:00"], "--start-time must be from 1970 to before 2100"),
    (["--bad-rate", "nan"], "--bad-rate must be a finite number"),
    (["--spike-rate", "inf"], "--spike-rate must be a finite number"),
    (["--linger-ms", "-5"], "--linger-ms must be within [0, 60000]"),
])
def test_absurd_producer_options_exit_2_naming_the_option(argv, message, capsys):
    from producer.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--dry-run", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_absurd_producer_defaults_from_the_environment_are_refused_too(monkeypatch, capsys, tmp_path):
    from producer.cli import main

    monkeypatch.setenv("IOT_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("PRODUCER_RATE", "nan")
    with pytest.raises(SystemExit) as exited:
        main(["--dry-run", "--count", "1"])
    assert exited.value.code == 2
    assert "--rate must be a finite number, got 'nan'" in capsys.readouterr().err


def test_the_summary_line_is_one_write_under_the_log_handlers_locks(monkeypatch):
    """A log line from kafka-python's I/O thread once landed between PRODUCER_SUMMARY's text and
    its newline: the line goes out in one write while no handler can write."""
    import logging

    from producer.cli import write_line

    events = []

    class Handler(logging.Handler):
        def acquire(self):
            events.append("acquire")

        def release(self):
            events.append("release")

    class Stderr:
        def write(self, text):
            events.append(("write", text))

        def flush(self):
            events.append("flush")

    handler = Handler()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr("sys.stderr", Stderr())
    write_line('PRODUCER_SUMMARY {"acked": 3}')
    assert events == ["acquire", ("write", 'PRODUCER_SUMMARY {"acked": 3}\n'), "flush", "release"]
