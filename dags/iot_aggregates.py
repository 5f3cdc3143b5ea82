"""Hourly aggregates from the lake into PostgreSQL, one run per hour of data.

Each run waits until the stream has committed every record stamped before its data interval
ends, then runs jobs/aggregates.py over the interval: it replaces that hour and the
AGGREGATES_LATENESS_HOURS hours before it (late events), so reruns and backfills are
idempotent. Of those hours it computes only the ones that changed (param recompute=changed, the
default; table aggregate_hours): a run reads its own hour of bronze, not three.
Backfill: `airflow backfill create --dag-id iot_aggregates --from-date ... --to-date ...`
(or the UI's Backfill button; recompute=all after deleting aggregate rows by hand).
No catchup: history is aggregated by backfills, on purpose.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, PokeReturnValue, task

from orchestration.aggregates import AGGREGATES_APPLICATION, aggregates_application_args
from orchestration.operators import GracefulSparkSubmitOperator

log = logging.getLogger(__name__)

with DAG(
    "iot_aggregates",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=2,
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["iot", "aggregates"],
    doc_md=__doc__,
    params={
        "bronze_path": Param("", type="string", description="bronze Delta table; empty: BRONZE_PATH"),
        "pg_schema": Param("", type="string", description="PostgreSQL schema; empty: PIPELINE_SCHEMA"),
        "recompute": Param("changed", enum=["changed", "all"],
                           description="changed: only the hours that records reached since they were computed "
                                       "(or never computed); all: every hour of the run's window"),
        "topic": Param("", type="string", description="Kafka topic the stream reads; empty: KAFKA_TOPIC"),
        "query_name": Param("", type="string", description="the stream whose progress is waited for; "
                                                            "empty: STREAM_QUERY_NAME"),
    },
) as dag:

    @task.sensor(poke_interval=30, timeout=3600, mode="poke")
    def wait_for_stream(params=None, data_interval_end=None) -> PokeReturnValue:
        """Done when the stream has committed every record stamped before the interval's end."""
        from common.env import Env
        from common.kafka import KafkaLogin
        from common.pipeline import PipelineNames
        from common.postgres import committed_end_offsets
        from orchestration import connections
        from orchestration.aggregates import offsets_before, offsets_still_needed

        env = Env()
        names = PipelineNames.from_env(env).with_params(params)
        needed = offsets_before(KafkaLogin.from_env(env, "stream"), names.topic, data_interval_end)
        with connections.postgres() as conn, conn.cursor() as cur:
            committed = committed_end_offsets(cur, names.pg_schema, query_name=names.query_name, topic=names.topic)
        missing = offsets_still_needed(needed, committed)
        if missing:
            log.info("the stream still has to commit %d records of %s before %s: %s", sum(missing.values()),
                     names.topic, data_interval_end.isoformat(), missing)
        return PokeReturnValue(is_done=not missing)

    # the job's environment holds the pipeline's logins only, and it runs at a low CPU
    # priority so that it never starves the stream (orchestration/operators.py)
    aggregate_hours = GracefulSparkSubmitOperator(
        task_id="aggregate_hours",
        conn_id="spark_batch",
        application=AGGREGATES_APPLICATION,
        application_args=aggregates_application_args(),
        name="iot-aggregates",
        batch=True,
    )

    wait_for_stream() >> aggregate_hours
