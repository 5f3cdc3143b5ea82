"""The stream's single-writer guarantees: one driver per checkpoint, and lake maintenance done
by that driver between two micro-batches.

Delta on S3 is safe with one writer per table (S3 has no atomic put-if-absent that Delta's
default log store relies on). So:
- `WriterLock`: a driver holds PostgreSQL advisory locks keyed by its checkpoint, by the
  normalised path of each Delta table it writes and by its PostgreSQL schema, for as long as
  it runs. A second writer of any of them (Airflow resubmitting while a stopping driver
  finishes its batch, an ad hoc run on a production name) waits, then is refused. A driver
  that dies loses its connection, and the locks.
- `LakeMaintenance`: the retention DAG and the reprocess job never write the stream's tables.
  They insert a row into `lake_maintenance`; the stream claims it between two micro-batches and
  carries it out (retention: delete the old partitions, compact, vacuum; requarantine: MERGE a
  reprocess run's quarantine decisions), and records the outcome for them to read.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
from datetime import date
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from common.postgres import connection, in_schema, open_connection

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


S3_SCHEMES = ("s3", "s3a", "s3n")


def normalise_location(location: str) -> str:
    """Return the canonical form of a table or checkpoint location, so that one folder has one
    lock however it is written: s3://, s3n:// and s3a:// are one scheme, the bucket is
    lower-case, repeated and trailing slashes and "." and ".." segments are resolved, and a
    local path is absolute (file:/...). Raise ValueError on an empty location."""
    text = location.strip()
    if not text:
        raise ValueError("empty location")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter: a local path
        return "file:" + os.path.realpath(text)
    if scheme == "file":
        return "file:" + os.path.realpath(parts.path or "/")
    path = posixpath.normpath("/" + re.sub("/+", "/", parts.path.lstrip("/")))
    if scheme in S3_SCHEMES:
        return f"s3a://{parts.netloc.lower()}{path.rstrip('/')}"
    return f"{scheme}://{parts.netloc}{path.rstrip('/')}"


def writer_resources(checkpoint: str, tables: dict[str, str], pg_database: str, pg_schema: str) -> dict[str, str]:
    """Return {lock key: what it protects} of a stream: its checkpoint, each Delta table it
    writes (by normalised path) and its PostgreSQL schema. Raise ValueError when two of the
    locations are the same folder or one lies inside another (a checkpoint inside a table
    would be vacuumed away; a table inside another corrupts both)."""
    locations = {"checkpoint": normalise_location(checkpoint),
                 **{f"{name} table": normalise_location(path) for name, path in tables.items()}}
    names = list(locations)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            la, lb = locations[a], locations[b]
            if la == lb or lb.startswith(la + "/") or la.startswith(lb + "/"):
                raise ValueError(f"the {a} ({la}) and the {b} ({lb}) overlap: give each its own folder")
    resources = {f"checkpoint:{locations['checkpoint']}": f"checkpoint {locations['checkpoint']}"}
    for name in names[1:]:
        resources[f"delta:{locations[name]}"] = f"{name} {locations[name]}"
    resources[f"pipeline-schema:{pg_database}.{pg_schema}"] = f"PostgreSQL schema {pg_database}.{pg_schema}"
    return resources


class WriterLock:
    """Session-level PostgreSQL advisory locks, one per resource a writer must own alone: its
    checkpoint, each Delta table by normalised path, its PostgreSQL schema (writer_resources).

    Taken in a fixed order on one connection, so two writers never deadlock. A lock held by
    another process is waited for up to `timeout_seconds` (Airflow resubmitting the stream
    while the stopping driver finishes its batch), then refused with a message naming what is
    held and by whom."""

    def __init__(self, connect_kwargs: dict, resources: dict[str, str], timeout_seconds: int,
                 application_name: str = "iot-writer-lock") -> None:
        self.connect_kwargs = connect_kwargs
        self.resources = dict(sorted(resources.items()))
        self.timeout_seconds = timeout_seconds
        self.application_name = application_name
        self._conn = None

    def acquire(self) -> None:
        """Block until this process holds every lock; raise TimeoutError after timeout_seconds."""
        from psycopg2 import errors

        conn = open_connection(self.connect_kwargs, self.application_name, autocommit=True)
        deadline = time.monotonic() + self.timeout_seconds
        try:
            with conn.cursor() as cur:
                for key, what in self.resources.items():
                    cur.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
                    if cur.fetchone()[0]:
                        continue
                    holder = self._holder(cur, key)
                    left = deadline - time.monotonic()
                    log.warning("the %s is held by another writer (%s): waiting up to %.0f s for it to stop",
                                what, holder, max(left, 0))
                    if left <= 0:
                        raise TimeoutError(self._refusal(what, holder))
                    cur.execute("select set_config('lock_timeout', %s, false)", (f"{int(left * 1000)}ms",))
                    try:
                        cur.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                    except errors.LockNotAvailable:
                        raise TimeoutError(self._refusal(what, self._holder(cur, key))) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        log.info("holding the single-writer locks of: %s", "; ".join(self.resources.values()))

    def _refusal(self, what: str, holder: str) -> str:
        return (f"the {what} is still held by another writer ({holder}) after {self.timeout_seconds} s "
                "(STREAM_LOCK_TIMEOUT_SECONDS): a Delta table, checkpoint or pipeline schema has one "
                "writer at a time. Stop that writer first, or give this run names of its own.")

    @staticmethod
    def _holder(cur, key: str) -> str:
        """Return who holds the advisory lock `key`, as PostgreSQL sees it."""
        cur.execute("select hashtextextended(%s, 0)", (key,))
        value = cur.fetchone()[0] & 0xFFFF_FFFF_FFFF_FFFF
        cur.execute("select a.pid, a.application_name, host(a.client_addr), a.backend_start "
                    "from pg_locks l join pg_stat_activity a on a.pid = l.pid "
                    "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
                    "and l.classid::text = %s and l.objid::text = %s",
                    (str(value >> 32), str(value & 0xFFFF_FFFF)))
        row = cur.fetchone()
        if row is None:
            return "a session that has since released it"
        pid, app, addr, since = row
        return (f"PostgreSQL backend {pid}, application {app or '?'}, from {addr or 'a local socket'}, "
                f"since {since:%Y-%m-%d %H:%M:%S %Z}")

    def release(self) -> None:
        """Release every lock (closing the connection releases them too)."""
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


def requarantine(spark: SparkSession, quarantine_path: str, params: dict) -> dict:
    """Make the quarantine rows of a range (params: topic, bounds {partition: [from, to)}) those
    of the staging table jobs/reprocess.py wrote (params: staging_path), in one MERGE, one
    commit: rows now valid leave, rows newly invalid arrive, changed reasons are replaced."""
    from delta.tables import DeltaTable

    topic = params["topic"].replace("'", "''")
    inside = " or ".join(f"(t.`partition` = {int(p)} and t.`offset` >= {int(lo)} and t.`offset` < {int(hi)})"
                         for p, (lo, hi) in params["bounds"].items())
    staged = spark.read.format("delta").load(params["staging_path"])
    if not DeltaTable.isDeltaTable(spark, quarantine_path):
        staged.write.format("delta").partitionBy("kafka_date").save(quarantine_path)
        return {"inserted": staged.count(), "updated": 0, "deleted": 0}
    table = DeltaTable.forPath(spark, quarantine_path)
    (table.alias("t")
     .merge(staged.alias("s"), "t.topic = s.topic and t.`partition` = s.`partition` and t.`offset` = s.`offset`")
     .whenMatchedUpdate(condition="not (t.failed_rules <=> s.failed_rules)",
                        set={"failed_rules": "s.failed_rules", "quarantined_at": "s.quarantined_at"})
     .whenNotMatchedInsertAll()
     .whenNotMatchedBySourceDelete(condition=f"t.topic = '{topic}' and ({inside or 'false'})")
     .execute())
    metrics = table.history(1).collect()[0].operationMetrics or {}
    return {"inserted": int(metrics.get("numTargetRowsInserted", 0)),
            "updated": int(metrics.get("numTargetRowsUpdated", 0)),
            "deleted": int(metrics.get("numTargetRowsDeleted", 0))}


class LakeMaintenance:
    """Claims and carries out the stream's pending lake maintenance requests."""

    def __init__(self, connect_kwargs: dict, schema: str, query_name: str, tables: dict[str, str],
                 poll_seconds: float, max_attempts: int = 3) -> None:
        if max_attempts < 1:
            raise ValueError(f"STREAM_MAINTENANCE_MAX_ATTEMPTS must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self.connect_kwargs = connect_kwargs
        self.schema = schema
        self.query_name = query_name
        self.tables = tables  # name -> Delta path
        self.poll_seconds = poll_seconds
        self._next_poll = 0.0

    def _sql(self, text: str):
        return in_schema(self.schema, text)

    def _connection(self):
        return connection(self.connect_kwargs, "iot-stream-maintenance")

    def reset_interrupted(self) -> tuple[int, int]:
        """Return (requeued, failed): the requests a previous driver of this stream left running
        set back to pending, and those already claimed `max_attempts` times marked failed (a
        request that kills the driver must not crash-loop the stream)."""
        with self._connection() as conn, conn.cursor() as cur:
            cur.execute(self._sql(
                "update {schema}.lake_maintenance set state = 'failed', finished_at = now(), "
                "error = format('the stream''s driver died while carrying it out, %%s times "
                "(STREAM_MAINTENANCE_MAX_ATTEMPTS=%%s): its log has the cause', attempts, %s) "
                "where query_name = %s and state = 'running' and attempts >= %s"),
                (self.max_attempts, self.query_name, self.max_attempts))
            failed = cur.rowcount
            cur.execute(self._sql("update {schema}.lake_maintenance set state = 'pending', started_at = null "
                                  "where query_name = %s and state = 'running'"), (self.query_name,))
            return cur.rowcount, failed

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
            request_id, kind, delete_before, retain_hours, params, attempt = claimed
            t0 = time.monotonic()
            try:
                if kind == "requarantine":
                    log.info("lake maintenance %d (attempt %d of %d): quarantine decisions of reprocess run %s "
                             "from %s", request_id, attempt, self.max_attempts, params.get("run_id"),
                             params.get("staging_path"))
                    result = {"quarantine": requarantine(spark, self.tables["quarantine"], params)}
                else:
                    log.info("lake maintenance %d (attempt %d of %d): deleting partitions before %s, compacting, "
                             "vacuuming (retain %d h)", request_id, attempt, self.max_attempts, delete_before,
                             retain_hours)
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
        with self._connection() as conn, conn.cursor() as cur:
            cur.execute(self._sql(
                "update {schema}.lake_maintenance set state = 'running', started_at = now(), "
                "attempts = attempts + 1 "
                "where request_id = (select request_id from {schema}.lake_maintenance "
                "where query_name = %s and state = 'pending' order by request_id limit 1 for update skip locked) "
                "returning request_id, kind, delete_before_date, vacuum_retain_hours, params, attempts"),
                (self.query_name,))
            return cur.fetchone()

    def _finish(self, request_id: int, state: str, result: dict | None, error: str | None) -> None:
        with self._connection() as conn, conn.cursor() as cur:
            cur.execute(self._sql("update {schema}.lake_maintenance set state = %s, finished_at = now(), "
                                  "result = %s, error = %s where request_id = %s"),
                        (state, json.dumps(result) if result is not None else None, error, request_id))
