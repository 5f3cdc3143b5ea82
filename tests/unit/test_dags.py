"""DAG integrity (every DAG parses with no connection or secret, and follows the conventions)
and the orchestration logic that needs no services."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
EXPECTED_DAGS = {"iot_stream", "iot_stream_adhoc", "iot_aggregates", "iot_retention", "iot_reprocess"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """Parse dags/ with a throwaway Airflow home, no AIRFLOW_CONN_* and Connection/Variable
    lookups that fail: a DAG that reads either at parse time shows up as an import error."""
    home = tmp_path_factory.mktemp("airflow-home")
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))]:
        del os.environ[key]
    os.environ.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                       "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db"})
    try:
        from unittest import mock

        from airflow.dag_processing.dagbag import DagBag
        from airflow.sdk import Connection, Variable

        def refuse(*args, **kwargs):
            raise AssertionError("a Connection or Variable was read at parse time")

        with mock.patch.object(Connection, "get", refuse), mock.patch.object(Variable, "get", refuse):
            yield DagBag(dag_folder=str(DAGS), include_examples=False) if _accepts_examples() else DagBag(
                dag_folder=str(DAGS))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _accepts_examples() -> bool:
    import inspect

    from airflow.dag_processing.dagbag import DagBag

    return "include_examples" in inspect.signature(DagBag.__init__).parameters


def test_every_dag_imports(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED_DAGS


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_conventions(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags
    assert "iot" in dag.tags
    assert dag.catchup is False
    source = Path(dag.fileloc).read_text()
    assert "catchup=" in source, "catchup must be explicit"
    assert dag.start_date.tzinfo is not None
    assert dag.max_active_runs >= 1
    for t in dag.tasks:
        assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_the_stream_dag_is_continuous_and_single_run(dagbag):
    from orchestration.operators import GracefulSparkSubmitOperator

    dag = dagbag.dags["iot_stream"]
    from airflow.sdk.definitions.timetables.simple import ContinuousTimetable

    assert isinstance(dag.timetable, ContinuousTimetable)
    assert dag.max_active_runs == 1
    (task,) = dag.tasks
    assert isinstance(task, GracefulSparkSubmitOperator)
    assert task._conn_id == "spark_lakehouse"
    assert task.application.endswith("jobs/stream.py")
    assert task.application_args == []  # the pipeline's own names, from .env
    adhoc = dagbag.dags["iot_stream_adhoc"]
    assert adhoc.schedule is None
    assert adhoc.tasks[0].application_args[:2] == ["--topic", "{{ params.topic }}"]


def test_the_adhoc_stream_requires_every_name(dagbag):
    """A run with some names of its own would take the pipeline's value for the rest and become
    a second writer of the pipeline's tables: the trigger form requires each name."""
    from airflow.sdk.definitions.param import ParamValidationError

    from orchestration.stream import STREAM_PARAMS

    adhoc = dagbag.dags["iot_stream_adhoc"]
    assert set(adhoc.params) == set(STREAM_PARAMS)
    for name in STREAM_PARAMS:
        param = adhoc.params.get_param(name)
        assert not param.has_value, f"{name} must have no default"
        assert param.resolve("mine") == "mine"
        for blank in ("", "   "):
            with pytest.raises(ParamValidationError):
                param.resolve(blank)


def test_aggregates_are_scoped_to_hourly_data_intervals(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["iot_aggregates"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 * * * *"
    aggregate = dag.get_task("aggregate_hours")
    assert aggregate.application_args[:4] == ["--start", "{{ data_interval_start.isoformat() }}",
                                              "--end", "{{ data_interval_end.isoformat() }}"]
    assert aggregate._conn_id == "spark_batch"  # one core locally (SPARK_BATCH_MASTER)
    assert [t.task_id for t in aggregate.upstream_list] == ["wait_for_stream"]
    # the job gets the pipeline's logins only, at the batch priority (orchestration/operators.py)
    from orchestration.operators import GracefulSparkSubmitOperator

    assert isinstance(aggregate, GracefulSparkSubmitOperator)
    assert aggregate.batch is True
    assert dagbag.dags["iot_stream"].get_task("run_stream").batch is False


def test_a_batch_job_starts_at_the_lowest_cpu_priority_and_every_thread_inherits_it():
    import subprocess
    import sys

    from orchestration.operators import batch_niceness, popen_priority

    assert batch_niceness({}) == 19
    assert batch_niceness({"BATCH_JOB_NICENESS": "7"}) == 7
    for bad in ("20", "-1", "low"):
        with pytest.raises(ValueError, match="BATCH_JOB_NICENESS"):
            batch_niceness({"BATCH_JOB_NICENESS": bad})
    assert popen_priority(0) == {}
    code = ("import os, threading; seen = []; t = threading.Thread(target=lambda: seen.append(os.getpriority("
            "os.PRIO_PROCESS, threading.get_native_id()))); t.start(); t.join(); print(os.nice(0), seen[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         **popen_priority(19)).stdout.split()
    assert out == ["19", "19"]


def test_retention_waits_for_the_stream_to_maintain_the_lake(dagbag):
    dag = dagbag.dags["iot_retention"]
    assert {t.task_id for t in dag.tasks} == {"delete_old_rows", "set_kafka_retention", "request_lake_maintenance",
                                              "wait_for_lake_maintenance", "prune_airflow_logs"}
    assert [t.task_id for t in dag.get_task("wait_for_lake_maintenance").upstream_list] == ["request_lake_maintenance"]


def test_dag_files_import_no_heavy_modules(tmp_path):
    code = (f"import sys, runpy; sys.path.insert(0, {str(REPO)!r})\n"
            "for f in ('iot_stream', 'iot_aggregates', 'iot_retention'):\n"
            f"    runpy.run_path({str(DAGS)!r} + '/' + f + '.py')\n"
            "print(sorted(m for m in ('pyspark', 'pandas', 'delta', 'kafka', 'psycopg2') if m in sys.modules))")
    # none of the parent's Airflow settings; a home of its own (else Airflow makes ~/airflow)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---- the operator's clean stop ------------------------------------------------------------

DRIVER = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
print("ready", flush=True)
signal.pause()
"""


def test_on_kill_sends_sigterm_to_the_python_driver_and_waits(tmp_path):
    """spark-submit stand-in: a shell whose Python child exits 7 on SIGTERM; the shell exits
    with its child's status. on_kill must reach the child, not kill the shell."""
    from orchestration.operators import GracefulSparkSubmitOperator, pyspark_driver_pids

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    shell = subprocess.Popen(["bash", "-c", f"{sys.executable} {script}; exit $?"], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        assert shell.stdout.readline().strip() == "ready"
        drivers = pyspark_driver_pids(shell.pid)
        assert len(drivers) == 1
        op = GracefulSparkSubmitOperator(task_id="t", application="x.py", stop_timeout=timedelta(seconds=30))
        op._hook = type("Hook", (), {"_submit_sp": shell})()
        op.on_kill()
        assert shell.returncode == 7  # the driver's own exit: it got SIGTERM and stopped itself
    finally:
        if shell.poll() is None:
            shell.kill()


# ---- aggregates and retention logic ---------------------------------------------------------

def test_offsets_still_needed():
    from orchestration.aggregates import offsets_still_needed

    assert offsets_still_needed({0: 10, 1: 5, 2: 0}, {0: 10, 1: 3}) == {1: 2}
    assert offsets_still_needed({0: 10}, {}) == {0: 10}
    assert offsets_still_needed({0: 10}, {0: 12}) == {}


def test_retention_settings_and_cutoffs():
    from common.env import Env
    from orchestration.retention import RetentionSettings

    s = RetentionSettings.from_env(Env(values={"RETENTION_POSTGRES_DAYS": "7", "RETENTION_LAKE_DAYS": "30",
                                               "RETENTION_VACUUM_HOURS": "200", "KAFKA_TOPIC_RETENTION_HOURS": "48"}))
    assert (s.postgres_days, s.lake_days, s.vacuum_retain_hours, s.kafka_hours) == (7, 30, 200, 48)
    end = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    assert s.postgres_cutoff(end) == datetime(2026, 11, 19, 3, 0, tzinfo=UTC)
    assert s.lake_cutoff(end) == date(2026, 10, 27)
    with pytest.raises(ValueError, match="RETENTION_VACUUM_HOURS must be >= 168"):
        RetentionSettings(vacuum_retain_hours=167)
    with pytest.raises(ValueError, match="postgres_days must be >= 1"):
        RetentionSettings(postgres_days=0)


def test_stream_args_reference_the_run_params():
    from orchestration.stream import STREAM_PARAMS, stream_application_args

    args = stream_application_args(with_params=True)
    assert args[::2] == [option for option, _ in STREAM_PARAMS.values()]
    assert args[1::2] == [f"{{{{ params.{name} }}}}" for name in STREAM_PARAMS]
    assert stream_application_args(with_params=False) == []
