"""Task logic of the manual iot_reprocess DAG: jobs/reprocess.py with the run's params."""

from __future__ import annotations

from pathlib import Path

from common.pipeline import REPROCESS_NAME_OPTIONS

REPO = Path(__file__).resolve().parents[1]
REPROCESS_APPLICATION = str(REPO / "jobs" / "reprocess.py")


def reprocess_application_args() -> list[str]:
    """Return jobs/reprocess.py's arguments, templated on the run's params (an empty param is
    not given: the job's default) and its run id."""
    args = ["--from", "{{ params.from_date }}", "--to", "{{ params.to_date }}", "--as-of", "{{ params.as_of }}",
            "--dry-run={{ params.dry_run | lower }}", "--chunk-rows", "{{ params.chunk_rows }}",
            "--requested-by", "airflow:{{ run_id }}"]
    for param, option in REPROCESS_NAME_OPTIONS.items():
        args += [option, f"{{{{ params.{param} }}}}"]
    return args
