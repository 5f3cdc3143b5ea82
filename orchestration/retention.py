"""Task logic of the daily retention DAG: PostgreSQL rows, the lake's Delta partitions (through
the stream, their only writer) and the topic's retention on Kafka.

Periods come from the environment (.env): RETENTION_POSTGRES_DAYS, RETENTION_LAKE_DAYS,
RETENTION_VACUUM_HOURS (at least 168), KAFKA_TOPIC_RETENTION_HOURS, RETENTION_DELETE_BATCH_ROWS,
RETENTION_AIRFLOW_LOG_DAYS (Airflow's own task and DAG-processor logs).
Cutoffs are computed from the run's data interval end, never from now().
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from common.env import Env
from common.postgres import in_schema

if TYPE_CHECKING:
    from common.kafka import KafkaLogin

log = logging.getLogger(__name__)

MIN_VACUUM_RETAIN_HOURS = 168  # Delta's own safety floor: readers and a failed writer's files


@dataclass(frozen=True)
class RetentionSettings:
    """How long each store keeps what."""

    postgres_days: int = 30
    lake_days: int = 365
    vacuum_retain_hours: int = 168
    kafka_hours: int = 168
    delete_batch_rows: int = 10_000
    airflow_log_days: int = 30

    @classmethod
    def from_env(cls, env: Env) -> RetentionSettings:
        """Return the periods from the environment (defaults above)."""
        d = cls()
        return cls(
            postgres_days=env.get_int("RETENTION_POSTGRES_DAYS", d.postgres_days),
            lake_days=env.get_int("RETENTION_LAKE_DAYS", d.lake_days),
            vacuum_retain_hours=env.get_int("RETENTION_VACUUM_HOURS", d.vacuum_retain_hours),
            kafka_hours=env.get_int("KAFKA_TOPIC_RETENTION_HOURS", d.kafka_hours),
            delete_batch_rows=env.get_int("RETENTION_DELETE_BATCH_ROWS", d.delete_batch_rows),
            airflow_log_days=env.get_int("RETENTION_AIRFLOW_LOG_DAYS", d.airflow_log_days),
        )

    def __post_init__(self) -> None:
        for name in ("postgres_days", "lake_days", "kafka_hours", "delete_batch_rows", "airflow_log_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"retention setting {name} must be >= 1, got {getattr(self, name)}")
        if self.vacuum_retain_hours < MIN_VACUUM_RETAIN_HOURS:
            raise ValueError(f"RETENTION_VACUUM_HOURS must be >= {MIN_VACUUM_RETAIN_HOURS} (Delta's safe minimum), "
                             f"got {self.vacuum_retain_hours}")

    def postgres_cutoff(self, interval_end: datetime) -> datetime:
        """Return the instant before which curated rows are deleted."""
        return interval_end - timedelta(days=self.postgres_days)

    def airflow_log_cutoff(self, interval_end: datetime) -> datetime:
        """Return the instant before which Airflow's log files (last written) are deleted."""
        return interval_end - timedelta(days=self.airflow_log_days)

    def lake_cutoff(self, interval_end: datetime) -> date:
        """Return the first kafka_date the lake keeps."""
        return (interval_end - timedelta(days=self.lake_days)).date()


def prune_logs(root: Path, cutoff: datetime) -> tuple[int, int]:
    """Delete the files under `root` last written before `cutoff`, then the folders left empty;
    return how many files and bytes went. A log still being written (the always-running
    stream's) is newer than any cutoff, so it stays. Symbolic links (Airflow's `latest`) are
    left alone unless what they point to is gone."""
    files = size = 0
    limit = cutoff.timestamp()
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mtime < limit:
                path.unlink()
                files += 1
                size += st.st_size
    for folder, dirs, names in os.walk(root, topdown=False):
        here = Path(folder)
        for name in dirs + names:
            path = here / name
            if path.is_symlink() and not path.exists():  # Airflow's `latest`, to a folder gone
                path.unlink()
        if here != root and not any(here.iterdir()):
            here.rmdir()
    if files:
        log.info("deleted %d Airflow log files (%.1f MB) last written before %s", files, size / 1e6,
                 cutoff.isoformat())
    return files, size


def delete_in_batches(conn, schema: str, table: str, time_column: str, cutoff: datetime, batch_rows: int) -> int:
    """Delete rows of `table` with `time_column` before `cutoff`, `batch_rows` per transaction
    (short locks, bounded WAL, progress in the log); return how many were deleted."""
    statement = in_schema(schema, "delete from {schema}.{table} where ctid = any(array(select ctid from "
                                  "{schema}.{table} where {column} < %s limit %s))", table=table, column=time_column)
    total, started = 0, time.monotonic()
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(statement, (cutoff, batch_rows))
            deleted = cur.rowcount
        total += deleted
        if deleted:
            log.info("%s.%s: %d rows before %s deleted so far (%.1f s)", schema, table, total, cutoff.isoformat(),
                     time.monotonic() - started)
        if deleted < batch_rows:
            return total


def prune_stream_bookkeeping(conn, schema: str, cutoff: datetime) -> tuple[int, int]:
    """Delete health and progress rows older than `cutoff`, keeping each query's latest batch
    (the stream reads its end offsets from it); return (health rows, progress rows) deleted."""
    with conn, conn.cursor() as cur:
        cur.execute(in_schema(schema,
                              "delete from {schema}.stream_health h where batch_finished_at < %s and batch_id < "
                              "(select max(batch_id) from {schema}.stream_health l where l.query_id = h.query_id)"),
                    (cutoff,))
        health = cur.rowcount
        cur.execute(in_schema(schema,
                              "delete from {schema}.sink_progress p where committed_at < %s and batch_id < "
                              "(select max(batch_id) from {schema}.sink_progress l where l.query_id = p.query_id)"),
                    (cutoff,))
        return health, cur.rowcount


def set_topic_retention(login: KafkaLogin, topic: str, hours: int) -> tuple[str | None, str]:
    """Set the topic's retention.ms; return (previous value, value now in force)."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(**login.client_kwargs(), client_id="iot-retention",
                             request_timeout_ms=15_000)
    try:
        def current() -> str | None:
            # kafka-python 3: {"topic": {name: {config name: {"value": ..., ...}}}}
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            configs = described.get("topic", {}).get(topic)
            if configs is None:
                raise RuntimeError(f"topic {topic!r} not found on {login.bootstrap_servers}")
            entry = configs.get("retention.ms")
            return entry["value"] if entry else None

        before = current()
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                            configs={"retention.ms": str(hours * 3_600_000)})])
        return before, current()
    finally:
        admin.close()


def request_lake_maintenance(conn, schema: str, query_name: str, delete_before: date, vacuum_retain_hours: int,
                             requested_by: str) -> int:
    """Ask the stream `query_name` to maintain its Delta tables; return the request id."""
    with conn, conn.cursor() as cur:
        cur.execute(in_schema(
            schema, "insert into {schema}.lake_maintenance (requested_by, query_name, delete_before_date, "
                    "vacuum_retain_hours) values (%s, %s, %s, %s) returning request_id"),
            (requested_by, query_name, delete_before, vacuum_retain_hours))
        return cur.fetchone()[0]
