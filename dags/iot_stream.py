"""The stream under Airflow's supervision.

- iot_stream: the pipeline's own stream (names from .env). `@continuous` with one active run:
  when the driver dies the task retries, and when the retries are spent the run fails and the
  scheduler starts the next run at once. `make up` unpauses it. To stop it cleanly: pause the
  DAG, then mark the running task instance success (or failed) in the UI; the driver finishes
  its micro-batch and exits (orchestration/operators.py).
- iot_stream_adhoc: the same job on names of your own, from the run's params (trigger with
  config); retried on failure like the other, never rescheduled. Every name is required: a
  run on some names of its own and the pipeline's for the rest would be a second writer of the
  pipeline's tables, and each Delta table, checkpoint and schema has one writer at a time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param

from orchestration.operators import GracefulSparkSubmitOperator
from orchestration.stream import STREAM_APPLICATION, STREAM_PARAMS, stream_application_args

DEFAULT_ARGS = {
    "owner": "data-platform",
    "retries": 3,
    "retry_delay": timedelta(seconds=5),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=2),
}


def stream_dag(dag_id: str, schedule: str | None, adhoc: bool, doc: str) -> DAG:
    """Return a DAG with one task: the streaming job, submitted with spark-submit."""
    # no default: the trigger form requires each one, and a blank one is refused
    params = {name: Param(type="string", minLength=1, pattern=r"\S", description=text)
              for name, (_, text) in STREAM_PARAMS.items()}
    with DAG(dag_id, schedule=schedule, start_date=datetime(2026, 1, 1, tzinfo=UTC), catchup=False,
             max_active_runs=1, default_args=DEFAULT_ARGS, tags=["iot", "stream"], doc_md=doc,
             params=params if adhoc else {}) as dag:
        GracefulSparkSubmitOperator(
            task_id="run_stream",
            conn_id="spark_lakehouse",
            application=STREAM_APPLICATION,
            application_args=stream_application_args(with_params=adhoc),
            name=dag_id,
            stop_timeout=timedelta(minutes=2),
            stream=True,
        )
    return dag


iot_stream = stream_dag("iot_stream", "@continuous", adhoc=False, doc=__doc__)
iot_stream_adhoc = stream_dag("iot_stream_adhoc", None, adhoc=True, doc=__doc__)
