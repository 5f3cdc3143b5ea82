"""Reprocess: rebuild the curated rows of a range from bronze (jobs/reprocess.py), with the
current rules and STATUS_* thresholds. Manual: trigger it with params (the UI's "Trigger DAG
w/ config"). Start with dry_run=true: the task log then says, per kind and status, what would
be added, removed, reclassified, promoted out of quarantine or newly quarantined, and nothing
is written. The stream keeps running; the run reads only what the stream has committed, and
bronze is never modified. A failed or killed run resumes from its last committed chunk when
triggered again with the same params (its retry does so too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param

from common.pipeline import DEFAULT_REPROCESS_CHUNK_ROWS, MAX_REPROCESS_CHUNK_ROWS
from orchestration.operators import GracefulSparkSubmitOperator
from orchestration.reprocess import REPROCESS_APPLICATION, reprocess_application_args

with DAG(
    "iot_reprocess",
    schedule=None,
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["iot", "reprocess"],
    doc_md=__doc__,
    params={
        "dry_run": Param(True, type="boolean", description="print what would change, write nothing"),
        "from_date": Param("", type="string", description="first Kafka date, YYYY-MM-DD; empty: bronze's first"),
        "to_date": Param("", type="string", description="last Kafka date (inclusive); empty: bronze's last"),
        "as_of": Param("", type="string", description="bronze Delta version or timestamp; empty: latest"),
        "chunk_rows": Param(DEFAULT_REPROCESS_CHUNK_ROWS, type="integer", minimum=1, maximum=MAX_REPROCESS_CHUNK_ROWS,
                            description="records per chunk (one PostgreSQL transaction each)"),
        "topic": Param("", type="string", description="Kafka topic; empty: KAFKA_TOPIC"),
        "bronze_path": Param("", type="string", description="bronze Delta table; empty: BRONZE_PATH"),
        "quarantine_path": Param("", type="string", description="quarantine Delta table; empty: QUARANTINE_PATH"),
        "pg_schema": Param("", type="string", description="PostgreSQL schema; empty: PIPELINE_SCHEMA"),
        "query_name": Param("", type="string", description="the stream whose committed offsets bound the run; "
                                                            "empty: STREAM_QUERY_NAME"),
    },
) as dag:
    # the job's environment holds the pipeline's logins only, at a low CPU priority (the stream first)
    GracefulSparkSubmitOperator(
        task_id="reprocess",
        conn_id="spark_batch",
        application=REPROCESS_APPLICATION,
        application_args=reprocess_application_args(),
        name="iot-reprocess",
        batch=True,
    )
