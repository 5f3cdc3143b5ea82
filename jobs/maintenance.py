"""The stream's single-writer guarantees: one driver per checkpoint, and lake maintenance done
by that driver between two micro-batches.

Delta on S3 is safe with one writer per table (S3 has no atomic put-if-absent that Delta's
default log store relies on). So:
- `WriterLock`: a driver holds a PostgreSQL advisory lock keyed by its checkpoint for as long
  as it runs. A second driver of the same checkpoint (Airflow resubmitting while a stopping
  one finishes its batch) waits for it. A driver that dies loses its connection, and the lock.
- `LakeMaintenance`: the retention DAG never writes the stream's tables. It inserts a row into
  `lake_maintenance`; the stream claims it between two micro-batches, deletes the old
  partitions, compacts (OPTIMIZE) and vacuums, and records the outcome for the DAG to read.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class WriterLock:
    """A session-level PostgreSQL advisory lock named after the stream's checkpoint."""

    def __init__(self, connect_kwargs: dict, checkpoint: str, timeout_seconds: int) -> None:
        self.connect_kwargs = connect_kwargs
        self.checkpoint = checkpoint
        self.timeout_seconds = timeout_seconds
        self._conn = None

    def acquire(self) -> None:
        """Block until this process holds the lock; raise TimeoutError after timeout_seconds."""
        import psycopg2
        from psycopg2 import errors

        conn = psycopg2.connect(**self.connect_kwargs, connect_timeout=10, application_name="iot-stream-lock")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (self.checkpoint,))
            if not cur.fetchone()[0]:
                log.warning("another driver holds checkpoint %s: waiting up to %d s for it to stop",
                            self.checkpoint, self.timeout_seconds)
                cur.execute("select set_config('lock_timeout', %s, false)", (f"{self.timeout_seconds}s",))
                try:
                    cur.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (self.checkpoint,))
                except errors.LockNotAvailable as exc:
                    conn.close()
                    raise TimeoutError(
                        f"checkpoint {self.checkpoint} is still held by another driver after "
                        f"{self.timeout_seconds} s (STREAM_LOCK_TIMEOUT_SECONDS); stop it first") from exc
        self._conn = conn
        log.info("holding the single-writer lock of checkpoint %s", self.checkpoint)

    def release(self) -> None:
        """Release the lock (closing the connection releases it too)."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None


def maintain_table(spark: SparkSession, path: str, delete_before: date, vacuum_retain_hours: int) -> dict:
    """Delete the partitions of `path` older than `delete_before`, compact, vacuum; return metrics."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not DeltaTable.isDeltaTable(spark, path):
        return {"skipped": "not a Delta table yet"}
    table = DeltaTable.forPath(spark, path)
    metrics: dict[str, object] = {}
    table.delete(F.col("kafka_date") < F.lit(delete_before))
    delete = table.history(1).collect()[0]
    if delete.operation == "DELETE":
        om = delete.operationMetrics or {}
        metrics["deleted_rows"] = int(om.get("numDeletedRows", 0))
        metrics["deleted_files"] = int(om.get("numRemovedFiles", 0))
    optimized = table.optimize().where(f"kafka_date >= '{delete_before.isoformat()}'").executeCompaction()
    opt = optimized.collect()[0].metrics
    metrics["compaction_files_removed"] = int(opt.numFilesRemoved)
    metrics["compaction_files_added"] = int(opt.numFilesAdded)
    table.vacuum(float(vacuum_retain_hours))
    metrics["version"] = table.history(1).collect()[0].version
    return metrics


class LakeMaintenance:
    """Claims and carries out the stream's pending lake maintenance requests."""

    def __init__(self, connect_kwargs: dict, schema: str, query_name: str, tables: dict[str, str],
                 poll_seconds: float) -> None:
        self.connect_kwargs = connect_kwargs
        self.schema = schema
        self.query_name = query_name
        self.tables = tables  # name -> Delta path
        self.poll_seconds = poll_seconds
        self._next_poll = 0.0

    def _sql(self, text: str):
        from psycopg2 import sql

        return sql.SQL(text).format(schema=sql.Identifier(self.schema))

    def _connect(self):
        import psycopg2

        return psycopg2.connect(**self.connect_kwargs, connect_timeout=10, application_name="iot-stream-maintenance")

    def reset_interrupted(self) -> int:
        """Return requests a previous driver of this stream left running, set back to pending."""
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(self._sql("update {schema}.lake_maintenance set state = 'pending', started_at = null "
                                      "where query_name = %s and state = 'running'"), (self.query_name,))
                return cur.rowcount
        finally:
            conn.close()

    def due(self) -> bool:
        """Return True when it is time to look for requests again."""
        return time.monotonic() >= self._next_poll

    def run_pending(self, spark: SparkSession) -> int:
        """Carry out every pending request of this stream; return how many were handled.

        Call only between micro-batches (the caller holds the batch lock). A failed request is
        recorded as failed with its error, for the DAG that asked to report; the stream goes on."""
        self._next_poll = time.monotonic() + self.poll_seconds
        handled = 0
        while (claimed := self._claim()) is not None:
            request_id, delete_before, retain_hours = claimed
            log.info("lake maintenance %d: deleting partitions before %s, compacting, vacuuming (retain %d h)",
                     request_id, delete_before, retain_hours)
            t0 = time.monotonic()
            try:
                result = {name: maintain_table(spark, path, delete_before, retain_hours)
                          for name, path in self.tables.items()}
            except Exception as exc:
                log.exception("lake maintenance %d failed", request_id)
                self._finish(request_id, "failed", None, f"{type(exc).__name__}: {exc}")
            else:
                result["seconds"] = round(time.monotonic() - t0, 1)
                log.info("lake maintenance %d done: %s", request_id, result)
                self._finish(request_id, "done", result, None)
            handled += 1
        return handled

    def _claim(self):
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(self._sql(
                    "update {schema}.lake_maintenance set state = 'running', started_at = now() "
                    "where request_id = (select request_id from {schema}.lake_maintenance "
                    "where query_name = %s and state = 'pending' order by request_id limit 1 for update skip locked) "
                    "returning request_id, delete_before_date, vacuum_retain_hours"), (self.query_name,))
                return cur.fetchone()
        finally:
            conn.close()

    def _finish(self, request_id: int, state: str, result: dict | None, error: str | None) -> None:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(self._sql("update {schema}.lake_maintenance set state = %s, finished_at = now(), "
                                      "result = %s, error = %s where request_id = %s"),
                            (state, json.dumps(result) if result is not None else None, error, request_id))
        finally:
            conn.close()
