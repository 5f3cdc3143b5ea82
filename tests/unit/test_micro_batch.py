"""The micro-batch processor with in-memory sinks (no services): the order in which it writes,
a replayed batch that every sink skips, and failures that propagate so Spark never commits a
batch that did not land everywhere. The sinks here keep the real sinks' contract (each skips
a batch it already has, jobs/sinks.py); the real ones are exercised against the stack by
tests/integration/test_stream.py and test_stream_faults.py."""

from __future__ import annotations

import threading

import pytest

from common.pipeline import PipelineNames
from jobs.micro_batch import QUERY_ID_PROPERTY, BatchHealth, BatchProcessor, BatchResult, StopRequested
from jobs.transform import Thresholds
from tests.unit.test_transform import kafka_rows, with_

NAMES = PipelineNames(topic="t", checkpoint="mem://c", bronze_path="mem://bronze", quarantine_path="mem://quarantine",
                      pg_schema="s", query_name="q")


class MemoryTable:
    """A Delta table's stand-in: one write per batch, a batch it already has skipped."""

    def __init__(self, name: str, events: list, fail: BaseException | None = None) -> None:
        self.name, self.events, self.fail = name, events, fail
        self.rows: dict[tuple[str, int], list[dict]] = {}
        self.lock = threading.Lock()

    def write(self, rows, query_id: str, batch_id: int) -> bool:
        if self.fail is not None:
            raise self.fail
        collected = [r.asDict() for r in rows.collect()]
        with self.lock:
            if (query_id, batch_id) in self.rows:
                self.events.append((self.name, batch_id, "skipped"))
                return False
            self.rows[(query_id, batch_id)] = collected
            self.events.append((self.name, batch_id, "written"))
        return True


class MemoryPostgres:
    """PostgreSQL's stand-in: rows, progress and health in one step; a known batch does nothing."""

    def __init__(self, events: list, fail: BaseException | None = None) -> None:
        self.events, self.fail = events, fail
        self.health: dict[tuple[str, int], BatchHealth] = {}
        self.readings: dict[str, str] = {}  # event_id -> CSV line
        self.timings: dict[tuple[str, int], tuple[int, int]] = {}

    def committed_end_offsets(self, query_id: str) -> dict[int, int]:
        done = sorted(b for q, b in self.health if q == query_id)
        return dict(self.health[(query_id, done[-1])].end_offsets) if done else {}

    def write_batch(self, query_id: str, batch_id: int, health: BatchHealth, csv_lines: list[str]) -> BatchResult:
        if self.fail is not None:
            raise self.fail
        if (query_id, batch_id) in self.health:
            self.events.append(("postgres", batch_id, "skipped"))
            return BatchResult(committed=False, inserted=0, duplicates=0)
        new = {line.split(",", 1)[0]: line for line in csv_lines if line.split(",", 1)[0] not in self.readings}
        self.readings.update(new)
        self.health[(query_id, batch_id)] = health
        self.events.append(("postgres", batch_id, "written"))
        return BatchResult(committed=True, inserted=len(new), duplicates=len(csv_lines) - len(new))

    def record_lake_timings(self, query_id: str, batch_id: int, bronze_ms: int, quarantine_ms: int,
                            started_at) -> None:
        self.timings[(query_id, batch_id)] = (bronze_ms, quarantine_ms)
        self.events.append(("timings", batch_id, "written"))

    def close(self) -> None:
        pass


class Sinks:
    def __init__(self, bronze_fail=None, postgres_fail=None) -> None:
        self.events: list[tuple[str, int, str]] = []
        self.bronze = MemoryTable("bronze", self.events, bronze_fail)
        self.quarantine = MemoryTable("quarantine", self.events)
        self.postgres = MemoryPostgres(self.events, postgres_fail)

    def processor(self, latest: dict[int, int] | None = None) -> BatchProcessor:
        """A new processor, as a new driver process would build it, on these sinks."""
        return BatchProcessor(NAMES, Thresholds(), self.bronze, self.quarantine, self.postgres,
                              latest_offsets=lambda: dict(latest or {0: 3}), log_summary_seconds=0)


@pytest.fixture
def in_query(spark):
    """Run as a streaming query's batch does: with its query id as a local property."""
    spark.sparkContext.setLocalProperty(QUERY_ID_PROPERTY, "query-1")
    yield
    spark.sparkContext.setLocalProperty(QUERY_ID_PROPERTY, None)


BATCH = [with_(event_id="00000000-0000-4000-8000-000000000001"), b"{not json",
         with_(event_id="00000000-0000-4000-8000-000000000002", seq=2)]


def test_a_batch_lands_in_postgres_first_then_the_lake_then_its_timings(spark, in_query):
    sinks = Sinks()
    processor = sinks.processor(latest={0: 5})
    processor(kafka_rows(spark, BATCH), 0)

    assert sinks.events[0] == ("postgres", 0, "written")
    assert sorted(sinks.events[1:3]) == [("bronze", 0, "written"), ("quarantine", 0, "written")]
    assert sinks.events[3:] == [("timings", 0, "written")]
    health = sinks.postgres.health[("query-1", 0)]
    assert (health.query_name, health.topic) == ("q", "t")
    assert (health.rows_in, health.rows_valid, health.rows_quarantined) == (3, 2, 1)
    assert health.rule_failures == {"json_object": 1}
    assert health.end_offsets == {0: 3}
    assert health.offsets_behind == 2  # the topic's end (5) minus the batch's end (3)
    assert sorted(sinks.postgres.readings) == ["00000000-0000-4000-8000-000000000001",
                                               "00000000-0000-4000-8000-000000000002"]
    assert [r["offset"] for r in sinks.bronze.rows[("query-1", 0)]] == [0, 1, 2]
    (invalid,) = sinks.quarantine.rows[("query-1", 0)]
    assert (invalid["offset"], invalid["failed_rules"], bytes(invalid["value"])) == (1, ["json_object"], b"{not json")
    assert (processor.batches, processor.last_batch_id, processor.end_offsets) == (1, 0, {0: 3})


def test_a_replayed_batch_is_skipped_by_every_sink_and_resumes_the_offsets(spark, in_query):
    sinks = Sinks()
    sinks.processor()(kafka_rows(spark, BATCH), 0)
    before = list(sinks.events)

    replaying = sinks.processor()  # a new driver, which Spark hands the last batch again
    replaying(kafka_rows(spark, BATCH), 0)

    replayed = sinks.events[len(before):]
    assert replayed[0] == ("postgres", 0, "skipped")
    # bronze and quarantine are written side by side, in either order; and no timings
    assert sorted(replayed[1:]) == [("bronze", 0, "skipped"), ("quarantine", 0, "skipped")]
    assert len(sinks.postgres.readings) == 2
    assert list(sinks.bronze.rows) == list(sinks.quarantine.rows) == [("query-1", 0)]
    assert replaying.end_offsets == {0: 3}  # read back from the committed health row
    assert (replaying.batches, replaying.last_batch_id) == (1, 0)


def test_a_batch_without_invalid_records_writes_no_quarantine(spark, in_query):
    sinks = Sinks()
    sinks.processor()(kafka_rows(spark, [BATCH[0], BATCH[2]]), 0)
    assert [e[0] for e in sinks.events] == ["postgres", "bronze", "timings"]
    assert sinks.quarantine.rows == {}


def test_a_failing_lake_write_fails_the_batch(spark, in_query):
    sinks = Sinks(bronze_fail=OSError("the object store is down"))
    processor = sinks.processor()
    with pytest.raises(OSError, match="the object store is down"):
        processor(kafka_rows(spark, BATCH), 0)
    # PostgreSQL committed it (its replay will be skipped), the lake did not: Spark replays the
    # batch, and no timings claim a batch that did not land
    assert ("postgres", 0, "written") in sinks.events
    assert sinks.bronze.rows == {}
    assert sinks.postgres.timings == {}
    assert (processor.batches, processor.last_batch_id) == (0, -1)


def test_a_failing_postgres_write_fails_the_batch_before_the_lake(spark, in_query):
    sinks = Sinks(postgres_fail=ConnectionError("PostgreSQL is down"))
    processor = sinks.processor()
    with pytest.raises(ConnectionError, match="PostgreSQL is down"):
        processor(kafka_rows(spark, BATCH), 0)
    assert sinks.events == []
    assert processor.end_offsets == {}  # not advanced


def test_a_batch_after_a_stop_request_writes_nothing(spark, in_query):
    sinks = Sinks()
    processor = sinks.processor()
    processor.stopping = True
    with pytest.raises(StopRequested):
        processor(kafka_rows(spark, BATCH), 0)
    assert sinks.events == []


def test_a_batch_outside_a_streaming_query_is_refused(spark):
    with pytest.raises(RuntimeError, match="not running inside a streaming query"):
        Sinks().processor()(kafka_rows(spark, [BATCH[0]]), 0)
