"""What the stream DAGs submit: jobs/stream.py and its arguments from the run's params."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STREAM_APPLICATION = str(REPO / "jobs" / "stream.py")

# Run params of the ad hoc stream DAG: a stream on names of your own, every one of them
# required (jobs/stream.py refuses a run with some names and not others). The supervised
# iot_stream DAG passes none: the pipeline's configured names (.env).
STREAM_PARAMS = {
    "topic": ("--topic", "Kafka topic"),
    "pg_schema": ("--pg-schema", "PostgreSQL schema of the curated, progress and health tables"),
    "checkpoint": ("--checkpoint", "checkpoint location (s3a://...)"),
    "bronze_path": ("--bronze-path", "bronze Delta table (s3a://...)"),
    "quarantine_path": ("--quarantine-path", "quarantine Delta table (s3a://...)"),
    "query_name": ("--query-name", "streaming query name"),
}


def stream_application_args(with_params: bool) -> list[str]:
    """Return jobs/stream.py's arguments; with Jinja references to the run's params when asked."""
    if not with_params:
        return []
    args: list[str] = []
    for name, (option, _) in STREAM_PARAMS.items():
        args += [option, "{{ params.%s }}" % name]  # noqa: UP031 - a Jinja template, not a format
    return args
