"""Running the real DAGs from tests: `dag.test()` in this process against the stack's Airflow
metadata database (tasks run here, with the stack's Airflow environment), and the REST API of
the running api-server for tests that need the real scheduler."""

from __future__ import annotations

import os
from datetime import datetime

from stack.manager import airflow_api
from stack.services import airflow_env
from stack.settings import REPO_ROOT, StackSettings


class DagRunner:
    """Parses the project's DAG files and runs one with dag.test()."""

    def __init__(self, stack: StackSettings) -> None:
        from airflow.dag_processing.dagbag import DagBag

        self.api = airflow_api(stack)
        self.bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        assert self.bag.import_errors == {}, self.bag.import_errors

    def test(self, dag_id: str, logical_date: datetime, conf: dict) -> str:
        """Run the DAG for `logical_date` with `conf`; return the run's final state.

        The DAG is paused meanwhile: `make up` unpauses it, and the running scheduler would
        otherwise also pick up the test run's task instances and run them a second time."""
        was_paused = self.api.dag(dag_id)["is_paused"]
        self.api.set_paused(dag_id, True)
        try:
            run = self.bag.dags[dag_id].test(logical_date=logical_date, run_conf=conf)
        finally:
            self.api.set_paused(dag_id, was_paused)
        return str(run.state)


def airflow_environment(stack: StackSettings) -> dict[str, str]:
    """Return the environment the stack's Airflow components run with (metadata DB,
    AIRFLOW_CONN_*, the stack's spark-submit), for processes of this user: the Spark drivers
    they start (a DAG test's spark-submit, the tests' own) keep their temporary files in
    stackctl's scratch folder, not in the services' (the service user's own, as root)."""
    return {**airflow_env(stack), "SPARK_SCRATCH_DIR": str(stack.scratch_dirs["stackctl"])}


def use_airflow_environment(stack: StackSettings) -> None:
    """Give this process Airflow's environment (airflow_environment). Call before airflow is
    first imported."""
    os.environ.update(airflow_environment(stack))


__all__ = ["DagRunner", "airflow_api", "airflow_environment", "use_airflow_environment"]
