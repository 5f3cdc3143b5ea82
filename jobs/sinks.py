"""Where micro-batches go: Delta tables on the object store, and PostgreSQL.

Every write is idempotent per (query id, batch id), so a micro-batch replayed after a crash
writes nothing twice:
- Delta: each append records "<query id>:<batch id>" as the commit's userMetadata, in the same
  atomic commit as the data. The first batch a driver process handles looks up the table's
  recent history for the last batch this query committed and skips a batch already there;
  after that the process itself knows what it wrote. This is sound because each Delta table
  has exactly one writer (the stream), and Spark replays only the batch after the last one
  it recorded as complete, so an interrupted batch is at most a few commits back. Delta's own
  txnAppId/txnVersion options do the same but reconstruct the table state on every write
  (5 to 18 s per append on a 2-core machine, against 0.5 s for a plain append), more than a
  micro-batch's whole trigger interval.
- PostgreSQL: the batch's rows, its progress row and its health row commit in one
  transaction; a replayed batch finds its progress row and does nothing.
Errors are never swallowed: they fail the micro-batch, the query stops, and the restarted
job replays the batch from its checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from common.postgres import committed_end_offsets, in_schema, open_connection
from jobs.micro_batch import BatchHealth, BatchResult
from jobs.transform import CURATED_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)


HISTORY_LOOKBACK = 50


def batch_marker(query_id: str, batch_id: int) -> str:
    """Return the userMetadata recorded with a stream's Delta commit."""
    return f"{query_id}:{batch_id}"


class DeltaSink:
    """An append-only Delta table, partitioned by `partition_by`, written once per batch."""

    def __init__(self, path: str, partition_by: str = "kafka_date", properties: dict[str, str] | None = None) -> None:
        self.path = path
        self.partition_by = partition_by
        # table properties the table must carry (a table made before they existed gets them
        # from its first write by this process): what bounds its log, jobs/spark_conf.py
        self.properties = dict(properties or {})
        self._properties_checked = not self.properties
        self._last_batch: dict[str, int] = {}

    def ensure_properties(self, spark) -> list[str]:
        """Set the table properties that differ from `properties` (one metadata commit); return
        their names. Nothing when the table does not exist yet: it is made with the session's
        defaults, which come from the same settings."""
        from delta.tables import DeltaTable

        if not DeltaTable.isDeltaTable(spark, self.path):
            return []
        current = DeltaTable.forPath(spark, self.path).detail().select("properties").collect()[0][0] or {}
        changed = {k: v for k, v in self.properties.items() if current.get(k) != v}
        if changed:
            assignments = ", ".join(f"'{k}' = '{v}'" for k, v in sorted(changed.items()))
            spark.sql(f"ALTER TABLE delta.`{self.path}` SET TBLPROPERTIES ({assignments})")
            log.info("%s: set %s", self.path, assignments)
        return sorted(changed)

    def last_committed_batch(self, spark, query_id: str) -> int:
        """Return the last batch id `query_id` committed to the table (-1 when none)."""
        from delta.tables import DeltaTable

        if not DeltaTable.isDeltaTable(spark, self.path):
            return -1
        prefix = f"{query_id}:"
        history = DeltaTable.forPath(spark, self.path).history(HISTORY_LOOKBACK).select("userMetadata").collect()
        batches = [int(r.userMetadata[len(prefix):]) for r in history
                   if r.userMetadata and r.userMetadata.startswith(prefix)]
        return max(batches, default=-1)

    def write(self, rows: DataFrame, query_id: str, batch_id: int) -> bool:
        """Append `rows` unless this batch is already in the table; return True if written."""
        if not self._properties_checked:
            self.ensure_properties(rows.sparkSession)
            self._properties_checked = True
        last = self._last_batch.get(query_id)
        if last is None:
            last = self.last_committed_batch(rows.sparkSession, query_id)
        if batch_id <= last:
            log.info("batch %d already in %s (last committed %d): skipped", batch_id, self.path, last)
            self._last_batch[query_id] = last
            return False
        self._last_batch.pop(query_id, None)  # unknown until the commit succeeds
        # One file per batch and date: a micro-batch is bounded and small, and one file per
        # Kafka partition per batch (Spark's default) left thousands of small files a day, which
        # made every read of the day (the hourly aggregates) slow until the daily compaction.
        (rows.coalesce(1).write.format("delta").mode("append")
         .option("userMetadata", batch_marker(query_id, batch_id))
         .partitionBy(self.partition_by).save(self.path))
        self._last_batch[query_id] = batch_id
        return True


class PostgresSink:
    """Curated rows, sink progress and stream health in one PostgreSQL transaction per batch."""

    def __init__(self, connect_kwargs: dict, schema: str) -> None:
        self.connect_kwargs = connect_kwargs
        self.schema = schema
        self._conn = None

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(self.connect_kwargs, "iot-stream")
        return self._conn

    def _sql(self, text: str):
        return in_schema(self.schema, text)

    def committed_end_offsets(self, query_id: str) -> dict[int, int]:
        """Return the end offsets recorded by the query's last committed batch (empty if none)."""
        conn = self._connection()
        with conn, conn.cursor() as cur:
            return committed_end_offsets(cur, self.schema, query_id=query_id)

    def write_batch(self, query_id: str, batch_id: int, health: BatchHealth, csv_lines: list[str]) -> BatchResult:
        """Insert the batch's rows (duplicates skipped), its progress row and its health row,
        atomically; do nothing when the batch is already committed."""
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(self._sql("select 1 from {schema}.sink_progress where query_id = %s and batch_id = %s"),
                            (query_id, batch_id))
                if cur.fetchone():
                    return BatchResult(committed=False, inserted=0, duplicates=0)
                columns = ", ".join(CURATED_COLUMNS)
                cur.execute(self._sql(
                    "create temporary table if not exists staging_readings "
                    "(like {schema}.sensor_readings including defaults) on commit delete rows"))
                inserted = 0
                if csv_lines:
                    buffer = io.StringIO("\n".join(csv_lines) + "\n")
                    cur.copy_expert(f"copy staging_readings ({columns}) from stdin with (format csv)", buffer)
                    # ON CONFLICT DO NOTHING also drops a duplicate within the same batch.
                    cur.execute(self._sql(
                        f"insert into {{schema}}.sensor_readings ({columns}) "
                        f"select {columns} from staging_readings on conflict (event_id) do nothing"))
                    inserted = cur.rowcount
                duplicates = len(csv_lines) - inserted
                cur.execute(self._sql("insert into {schema}.sink_progress (query_id, batch_id) values (%s, %s)"),
                            (query_id, batch_id))
                cur.execute(self._sql(
                    "insert into {schema}.stream_health (query_id, batch_id, query_name, topic, batch_started_at, "
                    "batch_finished_at, rows_in, rows_valid, rows_quarantined, rows_inserted, duplicates, "
                    "rule_failures, validate_ms, postgres_ms, end_offsets, offsets_behind) "
                    "values (%s, %s, %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, "
                    "(extract(epoch from clock_timestamp() - %s::timestamptz) * 1000)::int, %s, %s)"),
                    (query_id, batch_id, health.query_name, health.topic, health.started_at,
                     health.rows_in, health.rows_valid, health.rows_quarantined, inserted, duplicates,
                     json.dumps(health.rule_failures), health.validate_ms, health.postgres_started_at,
                     json.dumps(health.end_offsets), health.offsets_behind))
            return BatchResult(committed=True, inserted=inserted, duplicates=duplicates)
        except Exception:
            # The transaction rolled back; drop the connection so the next attempt starts clean.
            self.close()
            raise

    def record_lake_timings(self, query_id: str, batch_id: int, bronze_ms: int, quarantine_ms: int,
                            started_at: datetime) -> None:
        """Complete the batch's health row once its Delta writes are done."""
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(self._sql(
                    "update {schema}.stream_health set bronze_ms = %s, quarantine_ms = %s, "
                    "batch_finished_at = clock_timestamp(), "
                    "total_ms = (extract(epoch from clock_timestamp() - %s::timestamptz) * 1000)::int "
                    "where query_id = %s and batch_id = %s"),
                    (bronze_ms, quarantine_ms, started_at, query_id, batch_id))
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, if any."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
