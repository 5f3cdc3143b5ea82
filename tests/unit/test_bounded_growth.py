"""What grows with the stream's uptime has a bound (issue 14, point 5): the parts that need no
running stack. The always-running task's log is one of them."""

from __future__ import annotations

from jobs.micro_batch import BatchLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_batches(batch_log: BatchLog, clock: Clock, count: int, every_s: float, seconds: float = 0.4,
                replays: frozenset[int] = frozenset(), slow: frozenset[int] = frozenset()):
    notable, summaries = [], []
    for i in range(count):
        clock.now += every_s
        worth, summary = batch_log.add(250, 249, 1, 249, 0, behind=3, seconds=20.0 if i in slow else seconds,
                                       replay=i in replays)
        if worth:
            notable.append(i)
        if summary:
            summaries.append(summary)
    return notable, summaries


def test_the_stream_log_grows_with_time_not_with_batches():
    clock = Clock()
    batch_log = BatchLog(every_s=300, slow_s=10, clock=clock)
    # a day at a 1 s trigger: 86,400 batches
    notable, summaries = run_batches(batch_log, clock, 86_400, every_s=1.0)
    assert notable == [0]  # the first batch only
    assert len(summaries) == 288  # one per 300 s
    assert summaries[0] == ("last 300 s: 300 batches, in=75000 valid=74700 quarantined=300 inserted=74700 "
                            "duplicates=0, mean 0.40 s, slowest 0.40 s, behind=3 (each batch: stream_health)")


def test_a_summary_counts_only_its_own_batches_and_names_the_slowest():
    clock = Clock()
    batch_log = BatchLog(every_s=60, slow_s=10, clock=clock)
    notable, summaries = run_batches(batch_log, clock, 120, every_s=1.0, slow=frozenset({70}),
                                     replays=frozenset({5}))
    assert notable == [0, 5, 70]  # first, replayed, slow
    assert len(summaries) == 2
    assert summaries[0].startswith("last 60 s: 60 batches, in=15000 ")
    assert "slowest 0.40 s" in summaries[0]
    assert summaries[1].startswith("last 60 s: 60 batches, in=15000 ")
    assert "slowest 20.00 s" in summaries[1]


def test_summary_seconds_zero_logs_every_batch():
    clock = Clock()
    notable, summaries = run_batches(BatchLog(every_s=0, clock=clock), clock, 50, every_s=1.0)
    assert notable == list(range(50))
    assert summaries == []


def test_airflow_logs_older_than_the_cutoff_go_and_the_live_one_stays(tmp_path):
    import os
    from datetime import UTC, datetime

    from orchestration.retention import RetentionSettings, prune_logs

    end = datetime(2026, 11, 30, 3, tzinfo=UTC)
    cutoff = RetentionSettings(airflow_log_days=30).airflow_log_cutoff(end)
    assert cutoff == datetime(2026, 10, 31, 3, tzinfo=UTC)
    old_run = tmp_path / "dag_id=iot_aggregates" / "run_id=old" / "task_id=aggregate_hours"
    new_run = tmp_path / "dag_id=iot_aggregates" / "run_id=new" / "task_id=aggregate_hours"
    stream = tmp_path / "dag_id=iot_stream" / "run_id=first" / "task_id=run_stream"
    processor = tmp_path / "dag_processor" / "2026-10-01" / "dags-folder"
    for folder in (old_run, new_run, stream, processor):
        folder.mkdir(parents=True)
    files = {old_run / "attempt=1.log": 1000, new_run / "attempt=1.log": 20,
             stream / "attempt=1.log": 300, processor / "iot_stream.py.log": 4000}
    for path, size in files.items():
        path.write_bytes(b"x" * size)
    old = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    for path in (old_run / "attempt=1.log", processor / "iot_stream.py.log"):
        os.utime(path, (old, old))
    # the stream's run began long ago, but its log is written to: it is recent
    (tmp_path / "dag_processor" / "latest").symlink_to(tmp_path / "dag_processor" / "2026-10-01")

    assert prune_logs(tmp_path, cutoff) == (2, 5000)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["dag_id=iot_aggregates/run_id=new/task_id=aggregate_hours/attempt=1.log",
                    "dag_id=iot_stream/run_id=first/task_id=run_stream/attempt=1.log"]
    assert not (tmp_path / "dag_id=iot_aggregates" / "run_id=old").exists()
    assert not (tmp_path / "dag_processor" / "latest").is_symlink()  # it pointed at a folder now gone
    assert prune_logs(tmp_path, cutoff) == (0, 0)


def test_the_stream_s_tables_keep_a_bounded_log():
    from common.env import Env
    from jobs.spark_conf import delta_log_retention, lakehouse_spark_conf
    from jobs.stream import StreamSettings

    assert delta_log_retention(Env({})) == "interval 168 hours"
    assert delta_log_retention(Env({"DELTA_LOG_RETENTION_HOURS": "240"})) == "interval 240 hours"
    import pytest

    with pytest.raises(ValueError, match="DELTA_LOG_RETENTION_HOURS must be at least 168"):
        delta_log_retention(Env({"DELTA_LOG_RETENTION_HOURS": "48"}))
    settings = StreamSettings.from_env(Env({"KAFKA_STREAM_PASSWORD": "x", "PIPELINE_DB_PASSWORD": "y"}))
    assert dict(settings.table_properties) == {"delta.logRetentionDuration": "interval 168 hours"}
    conf = lakehouse_spark_conf(Env({"S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"}), include_secrets=False)
    assert conf["spark.databricks.delta.properties.defaults.logRetentionDuration"] == "interval 168 hours"
