"""One micro-batch of the stream, typed: what it read (`BatchRows`), what it reports
(`BatchHealth`), and the `BatchProcessor` that writes it to every sink exactly once.

    Kafka rows ──parse, validate──▶ checked ──collect──▶ BatchRows ──▶ PostgreSQL (rows, health)
                                               ├──────────────────────▶ bronze (every record)
                                               └─ invalid ────────────▶ quarantine

The sinks are idempotent per (query id, batch id), so a batch replayed after a crash writes
nothing twice (jobs/sinks.py); the processor only has to run them in order and let every
failure propagate, so that Spark does not commit the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from jobs.rules import RULE_NAMES
from jobs.transform import Thresholds, built_once, curated_columns, parse, quarantine, to_bronze, validate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from common.pipeline import PipelineNames

log = logging.getLogger("jobs.stream")
QUERY_ID_PROPERTY = "sql.streaming.queryId"

# Spark's CSV writer, set up for PostgreSQL's CSV COPY: quotes doubled, empty = NULL,
# timestamps with their UTC offset.
CSV_OPTIONS = {"escape": '"', "quote": '"', "nullValue": "", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"}


@built_once
def curated_csv_column(thresholds):
    """Return a Column: the record's curated row as a CSV line (CURATED_COLUMNS order) when it
    is valid, else null. Built on the executors."""
    from pyspark.sql import functions as F

    line = F.to_csv(F.struct(*curated_columns(thresholds)), CSV_OPTIONS)
    return F.when(F.size("failed_rules") == 0, line)


@built_once
def batch_summary_columns(thresholds) -> tuple:
    """Return what the stream collects of each record for `summarize`: partition, offset,
    failed rules and, if valid, its curated CSV line."""
    from pyspark.sql import functions as F

    return (F.col("partition"), F.col("offset"), F.col("failed_rules"),
            curated_csv_column(thresholds).alias("curated_csv"))


@dataclass(frozen=True)
class BatchRows:
    """What one micro-batch read: counts of its checked records, and its valid rows."""

    rows_in: int
    quarantined: int
    rule_failures: dict[str, int]  # every rule: how many records failed it
    next_offsets: dict[int, int]  # Kafka partition -> offset after the last record seen
    curated_csv: list[str]  # the valid records' curated rows, CSV lines in CURATED_COLUMNS order

    @property
    def valid(self) -> int:
        return len(self.curated_csv)


def summarize(rows: Iterable) -> BatchRows:
    """Return the BatchRows of collected records: Rows of `batch_summary_columns` (partition,
    offset, failed_rules, curated_csv). Done on the driver: a micro-batch is bounded by
    maxOffsetsPerTrigger, and one collect beats an aggregation's shuffle by a second per batch
    on small batches."""
    failures = dict.fromkeys(RULE_NAMES, 0)
    next_offsets: dict[int, int] = {}
    lines: list[str] = []
    rows_in = quarantined = 0
    for row in rows:
        rows_in += 1
        if next_offsets.get(row.partition, -1) < row.offset + 1:
            next_offsets[row.partition] = row.offset + 1
        if row.failed_rules:
            quarantined += 1
            for name in row.failed_rules:
                failures[name] += 1
        else:
            lines.append(row.curated_csv)
    return BatchRows(rows_in, quarantined, failures, next_offsets, lines)


@dataclass(frozen=True)
class BatchHealth:
    """What a micro-batch reports in its health row (stream_health), written with its rows."""

    query_name: str
    topic: str
    started_at: datetime
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    rule_failures: dict[str, int]  # only the rules some record failed
    validate_ms: int
    postgres_started_at: datetime
    end_offsets: dict[int, int]  # Kafka partition -> next offset, after this batch
    offsets_behind: int  # the topic's latest offsets minus end_offsets, summed


@dataclass(frozen=True)
class BatchResult:
    """What the PostgreSQL transaction did."""

    committed: bool  # False: the batch was already committed (a replay)
    inserted: int
    duplicates: int


class TableSink(Protocol):
    def write(self, rows: DataFrame, query_id: str, batch_id: int) -> bool: ...


class HealthSink(Protocol):
    def committed_end_offsets(self, query_id: str) -> dict[int, int]: ...

    def write_batch(self, query_id: str, batch_id: int, health: BatchHealth, csv_lines: list[str]) -> BatchResult: ...

    def record_lake_timings(self, query_id: str, batch_id: int, bronze_ms: int, quarantine_ms: int,
                            started_at: datetime) -> None: ...

    def close(self) -> None: ...


@dataclass
class BatchLog:
    """What the log says about micro-batches: every figure of every batch is in the health rows
    (stream_health), so the log, which for the Airflow-supervised stream is one task log that
    grows as long as the driver lives, gets one summary line per `every_s` seconds and a line
    for each batch worth a look (the first, a replay, a slow one). Its growth is then bounded
    by the time it runs, not by the number of batches: about 100 bytes a minute at the
    default 300 s. `every_s` 0 logs every batch."""

    every_s: float = 300.0
    slow_s: float = 10.0
    clock: object = time.monotonic
    batches: int = 0
    rows_in: int = 0
    valid: int = 0
    quarantined: int = 0
    inserted: int = 0
    duplicates: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0
    behind: int = 0
    logged_any: bool = False
    since: float | None = None

    def __post_init__(self) -> None:
        self.since = self.clock()  # the first summary covers the driver's first `every_s`

    def add(self, rows_in: int, valid: int, quarantined: int, inserted: int, duplicates: int, behind: int,
            seconds: float, replay: bool) -> tuple[bool, str | None]:
        """Count one batch; return (whether the batch's own line is worth logging at INFO, the
        summary line when one is due)."""
        now = self.clock()
        self.batches += 1
        self.rows_in += rows_in
        self.valid += valid
        self.quarantined += quarantined
        self.inserted += inserted
        self.duplicates += duplicates
        self.seconds += seconds
        self.slowest_s = max(self.slowest_s, seconds)
        self.behind = behind
        notable = not self.every_s or not self.logged_any or replay or seconds >= self.slow_s
        self.logged_any = True
        if not self.every_s or now - self.since < self.every_s:
            return notable, None
        summary = (f"last {now - self.since:.0f} s: {self.batches} batches, in={self.rows_in} valid={self.valid} "
                   f"quarantined={self.quarantined} inserted={self.inserted} duplicates={self.duplicates}, "
                   f"mean {self.seconds / self.batches:.2f} s, slowest {self.slowest_s:.2f} s, behind={behind} "
                   "(each batch: stream_health)")
        self.batches = self.rows_in = self.valid = self.quarantined = self.inserted = self.duplicates = 0
        self.seconds = self.slowest_s = 0.0
        self.since = now
        return notable, summary


class StopRequested(RuntimeError):
    """Raised by a micro-batch that starts after a stop was requested (it is not committed)."""


class BatchProcessor:
    """The foreachBatch function: PostgreSQL, then bronze and quarantine, for one micro-batch."""

    def __init__(self, names: PipelineNames, thresholds: Thresholds, bronze: TableSink, quarantine_sink: TableSink,
                 postgres: HealthSink, latest_offsets: Callable[[], dict[int, int]],
                 log_summary_seconds: float = 300.0) -> None:
        self.names = names
        self.thresholds = thresholds
        self.bronze = bronze
        self.quarantine = quarantine_sink
        self.postgres = postgres
        self.latest_offsets = latest_offsets
        self.lock = threading.Lock()
        self.stopping = False
        self.end_offsets: dict[int, int] | None = None
        self.batches = 0
        self.last_batch_id = -1  # the last batch this process wrote to every sink
        self.batch_log = BatchLog(every_s=log_summary_seconds)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        """Process one micro-batch; raise on any failure (the batch is then not committed)."""
        with self.lock:
            if self.stopping:
                raise StopRequested(f"stop requested before batch {batch_id}")
            self._process(batch, batch_id)

    @staticmethod
    def _timed(write, rows: DataFrame, query_id: str, batch_id: int) -> int:
        """Write `rows` with `write`; return how long it took in ms."""
        t = time.monotonic()
        write(rows, query_id, batch_id)
        return int((time.monotonic() - t) * 1000)

    def _query_id(self, batch: DataFrame) -> str:
        query_id = batch.sparkSession.sparkContext.getLocalProperty(QUERY_ID_PROPERTY)
        if not query_id:
            raise RuntimeError(f"no {QUERY_ID_PROPERTY} local property: not running inside a streaming query")
        return query_id

    def _health(self, rows: BatchRows, started: datetime, validate_ms: int, end_offsets: dict[int, int],
                latest: dict[int, int]) -> BatchHealth:
        return BatchHealth(
            query_name=self.names.query_name, topic=self.names.topic, started_at=started,
            rows_in=rows.rows_in, rows_valid=rows.valid, rows_quarantined=rows.quarantined,
            rule_failures={k: v for k, v in rows.rule_failures.items() if v}, validate_ms=validate_ms,
            postgres_started_at=datetime.now(UTC), end_offsets=end_offsets,
            offsets_behind=sum(max(0, latest[p] - end_offsets.get(p, 0)) for p in latest))

    def _process(self, batch: DataFrame, batch_id: int) -> None:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        query_id = self._query_id(batch)
        if self.end_offsets is None:
            self.end_offsets = self.postgres.committed_end_offsets(query_id)
        batch.persist()
        checked = validate(parse(batch)).persist()
        try:
            # one Spark job: every record's coordinates, failed rules and, if valid, its CSV row
            rows = summarize(checked.select(*batch_summary_columns(self.thresholds)).collect())
            end_offsets = {**self.end_offsets, **rows.next_offsets}
            latest = self.latest_offsets()
            health = self._health(rows, started, int((time.monotonic() - t0) * 1000), end_offsets, latest)

            # 1. PostgreSQL first: the rows are visible as soon as possible. All three sinks
            #    are idempotent per batch, so their order does not affect exactly-once.
            result = self.postgres.write_batch(query_id, batch_id, health, rows.curated_csv)
            # 2. bronze (every record as received) and 3. quarantine (invalid records and their
            #    failed rules), side by side: two tables, one writer each. Most of a Delta
            #    write is waiting (the job's scheduling, the object store), not CPU.
            def write_quarantine() -> int:
                return self._timed(self.quarantine.write, quarantine(checked), query_id, batch_id)

            beside = Beside(write_quarantine) if rows.quarantined else None  # no thread for nothing to write
            try:
                bronze_ms = self._timed(self.bronze.write, to_bronze(batch), query_id, batch_id) if rows.rows_in else 0
            except BaseException:
                if beside:
                    beside.wait_after_failure()  # the batch's frames stay cached until it is done
                raise
            quarantine_ms = beside.result() if beside else 0
            if result.committed:
                self.postgres.record_lake_timings(query_id, batch_id, bronze_ms, quarantine_ms, started)
        finally:
            checked.unpersist()
            batch.unpersist()
        self.end_offsets = end_offsets
        self.batches += 1
        self.last_batch_id = batch_id
        self._log(batch_id, rows, result, time.monotonic() - t0, health.offsets_behind,
                  health.validate_ms, bronze_ms, quarantine_ms)

    def _log(self, batch_id: int, rows: BatchRows, result: BatchResult, seconds: float, behind: int,
             validate_ms: int, bronze_ms: int, quarantine_ms: int) -> None:
        notable, summary = self.batch_log.add(rows.rows_in, rows.valid, rows.quarantined, result.inserted,
                                              result.duplicates, behind, seconds, replay=not result.committed)
        log.log(logging.INFO if notable else logging.DEBUG,
                "batch %d: in=%d valid=%d quarantined=%d inserted=%d duplicates=%d behind=%d %s in %.2fs "
                "(validate %d ms, bronze %d ms, quarantine %d ms)",
                batch_id, rows.rows_in, rows.valid, rows.quarantined, result.inserted, result.duplicates, behind,
                "committed" if result.committed else "already committed (replay)", seconds,
                validate_ms, bronze_ms, quarantine_ms)
        if summary:
            log.info("%s", summary)


class Beside:
    """Runs `work` in a thread of its own that carries this thread's Spark job properties
    (pyspark's InheritableThread: the stream's query id and job group); `result()` waits for
    it and returns its value or raises its exception."""

    def __init__(self, work) -> None:
        from pyspark import InheritableThread

        self._value = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = work()
            except BaseException as e:  # handed to result(), which raises it in the caller
                self._error = e

        self._thread = InheritableThread(target=run, name="quarantine-writer", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait_after_failure(self) -> None:
        """Wait for the work while the caller's own failure propagates; log the work's, if any
        (it is not raised: the caller's is)."""
        self._thread.join()
        if self._error is not None:
            log.error("the work beside it failed too", exc_info=self._error)
