"""Where micro-batches go: Delta tables on the object store, and PostgreSQL.

Every write is idempotent per (query id, batch id), so a micro-batch replayed after a crash
writes nothing twice:
- Delta: appends carry txnAppId = query id and txnVersion = batch id; Delta skips a write
  whose version it has already committed for that application id.
- PostgreSQL: the batch's rows, its progress row and its health row commit in one
  transaction; a replayed batch finds its progress row and does nothing.
Errors are never swallowed: they fail the micro-batch, the query stops, and the restarted
job replays the batch from its checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.transform import CURATED_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaSink:
    """An append-only Delta table, partitioned by `partition_by`."""

    path: str
    partition_by: str = "kafka_date"

    def write(self, rows: DataFrame, app_id: str, batch_id: int) -> None:
        """Append `rows` once per (app_id, batch_id)."""
        (rows.write.format("delta").mode("append")
         .option("txnAppId", app_id).option("txnVersion", batch_id)
         .partitionBy(self.partition_by).save(self.path))


# Spark's CSV writer, set up for PostgreSQL's CSV COPY: quotes doubled, empty = NULL,
# timestamps with their UTC offset.
CSV_OPTIONS = {"escape": '"', "quote": '"', "nullValue": "", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"}


def curated_csv_lines(curated_rows: DataFrame) -> list[str]:
    """Return curated rows as CSV lines in CURATED_COLUMNS order (built on the executors)."""
    from pyspark.sql import functions as F

    line = F.to_csv(F.struct(*CURATED_COLUMNS), CSV_OPTIONS)
    return [row[0] for row in curated_rows.select(line).collect()]


@dataclass(frozen=True)
class BatchResult:
    """What the PostgreSQL transaction did."""

    committed: bool  # False: the batch was already committed (a replay)
    inserted: int
    duplicates: int


class PostgresSink:
    """Curated rows, sink progress and stream health in one PostgreSQL transaction per batch."""

    def __init__(self, connect_kwargs: dict, schema: str) -> None:
        self.connect_kwargs = connect_kwargs
        self.schema = schema
        self._conn = None

    def _connection(self):
        import psycopg2

        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(**self.connect_kwargs, connect_timeout=10,
                                          application_name="iot-stream")
        return self._conn

    def _sql(self, text: str):
        from psycopg2 import sql

        return sql.SQL(text).format(schema=sql.Identifier(self.schema))

    def committed_end_offsets(self, query_id: str) -> dict[int, int]:
        """Return the end offsets recorded by the query's last committed batch (empty if none)."""
        conn = self._connection()
        with conn, conn.cursor() as cur:
            cur.execute(self._sql("select end_offsets from {schema}.stream_health where query_id = %s "
                                  "order by batch_id desc limit 1"), (query_id,))
            row = cur.fetchone()
        return {int(p): int(o) for p, o in row[0].items()} if row else {}

    def write_batch(self, query_id: str, batch_id: int, csv_lines: list[str], health: dict) -> BatchResult:
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
                    "insert into {schema}.stream_health (query_id, batch_id, batch_started_at, batch_finished_at, "
                    "rows_in, rows_valid, rows_quarantined, rows_inserted, duplicates, rule_failures, "
                    "bronze_ms, quarantine_ms, postgres_ms, total_ms, end_offsets, offsets_behind) "
                    "values (%s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s, "
                    "(extract(epoch from clock_timestamp() - %s::timestamptz) * 1000)::int, "
                    "(extract(epoch from clock_timestamp() - %s::timestamptz) * 1000)::int, %s, %s)"),
                    (query_id, batch_id, health["started_at"], health["rows_in"], health["rows_valid"],
                     health["rows_quarantined"], inserted, duplicates, json.dumps(health["rule_failures"]),
                     health["bronze_ms"], health["quarantine_ms"], health["postgres_started_at"],
                     health["started_at"], json.dumps(health["end_offsets"]), health["offsets_behind"]))
            return BatchResult(committed=True, inserted=inserted, duplicates=duplicates)
        except Exception:
            # The transaction rolled back; drop the connection so the next attempt starts clean.
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, if any."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
