"""Daily retention: PostgreSQL rows, the lake's Delta partitions, the topic's retention.

- curated readings older than RETENTION_POSTGRES_DAYS are deleted in batches of
  RETENTION_DELETE_BATCH_ROWS (and old health/progress rows, keeping each query's latest);
- bronze and quarantine partitions older than RETENTION_LAKE_DAYS are deleted, the rest
  compacted (OPTIMIZE) and vacuumed (RETENTION_VACUUM_HOURS, at least 168). The stream is the
  only writer of those tables, so this DAG asks it to do so between two micro-batches and waits
  for the outcome (jobs/maintenance.py); the stream must be running;
- the topic's retention.ms is set to KAFKA_TOPIC_RETENTION_HOURS;
- Airflow's own logs (task and DAG-processor) last written more than RETENTION_AIRFLOW_LOG_DAYS
  ago are deleted (the always-running stream's task log is written to, so it stays).
Cutoffs count back from the data interval's end. Params name another pipeline (tests).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, PokeReturnValue, task

with DAG(
    "iot_retention",
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["iot", "retention"],
    doc_md=__doc__,
    params={
        "pg_schema": Param("", type="string", description="PostgreSQL schema; empty: PIPELINE_SCHEMA"),
        "topic": Param("", type="string", description="Kafka topic; empty: KAFKA_TOPIC"),
        "query_name": Param("", type="string", description="the stream that maintains the lake; "
                                                            "empty: STREAM_QUERY_NAME"),
    },
) as dag:

    @task
    def delete_old_rows(params=None, data_interval_end=None) -> dict:
        """Delete curated rows (in batches) and stream bookkeeping older than the cutoff."""
        from common.env import Env
        from common.pipeline import PipelineNames
        from orchestration import connections
        from orchestration.retention import RetentionSettings, delete_in_batches, prune_stream_bookkeeping

        env = Env()
        settings = RetentionSettings.from_env(env)
        schema = PipelineNames.from_env(env).with_params(params).pg_schema
        cutoff = settings.postgres_cutoff(data_interval_end)
        with connections.postgres() as conn:
            readings = delete_in_batches(conn, schema, "sensor_readings", "event_time", cutoff,
                                         settings.delete_batch_rows)
            health, progress = prune_stream_bookkeeping(conn, schema, cutoff)
        return {"cutoff": cutoff.isoformat(), "sensor_readings": readings, "stream_health": health,
                "sink_progress": progress}

    @task
    def set_kafka_retention(params=None) -> dict:
        """Set the topic's retention.ms from KAFKA_TOPIC_RETENTION_HOURS."""
        from common.env import Env
        from common.kafka import KafkaLogin
        from common.pipeline import PipelineNames
        from orchestration.retention import RetentionSettings, set_topic_retention

        env = Env()
        topic = PipelineNames.from_env(env).with_params(params).topic
        hours = RetentionSettings.from_env(env).kafka_hours
        before, now = set_topic_retention(KafkaLogin.from_env(env, "admin"), topic, hours)
        return {"topic": topic, "retention_ms_before": before, "retention_ms": now}

    @task
    def request_lake_maintenance(params=None, data_interval_end=None, run_id=None) -> int:
        """Ask the stream to delete old partitions, compact and vacuum; return the request id."""
        from common.env import Env
        from common.pipeline import PipelineNames
        from orchestration import connections
        from orchestration.retention import RetentionSettings, request_lake_maintenance

        env = Env()
        settings = RetentionSettings.from_env(env)
        names = PipelineNames.from_env(env).with_params(params)
        with connections.postgres() as conn:
            return request_lake_maintenance(
                conn, names.pg_schema, names.query_name,
                settings.lake_cutoff(data_interval_end), settings.vacuum_retain_hours, run_id)

    @task.sensor(poke_interval=10, timeout=7200, mode="poke")
    def wait_for_lake_maintenance(request_id: int, params=None) -> PokeReturnValue:
        """Done when the stream reports the request done; fails when it reports a failure."""
        from common.env import Env
        from common.pipeline import PipelineNames
        from common.postgres import lake_maintenance_outcome
        from orchestration import connections

        with connections.postgres() as conn:
            state, result, error = lake_maintenance_outcome(
                conn, PipelineNames.from_env(Env()).with_params(params).pg_schema, request_id)
        if state == "failed":
            raise RuntimeError(f"lake maintenance request {request_id} failed in the stream: {error}")
        return PokeReturnValue(is_done=state == "done", xcom_value=result)

    @task
    def prune_airflow_logs(data_interval_end=None) -> dict:
        """Delete Airflow's log files last written before the cutoff."""
        from pathlib import Path

        from airflow.configuration import conf

        from common.env import Env
        from orchestration.retention import RetentionSettings, prune_logs

        cutoff = RetentionSettings.from_env(Env()).airflow_log_cutoff(data_interval_end)
        files, size = prune_logs(Path(conf.get("logging", "base_log_folder")), cutoff)
        return {"cutoff": cutoff.isoformat(), "files": files, "bytes": size}

    delete_old_rows()
    set_kafka_retention()
    prune_airflow_logs()
    wait_for_lake_maintenance(request_lake_maintenance())
