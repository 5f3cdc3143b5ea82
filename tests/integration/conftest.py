"""The integration tiers share one running local stack; this starts it when it is down."""

from __future__ import annotations

import subprocess

import pytest

from common.env import Env
from stack import manager
from stack.settings import REPO_ROOT, StackSettings, ensure_env_file, load_settings

REQUIRED = {"postgres", "kafka", "minio", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "superset"}


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    """Return the settings of a running stack, running `stackctl up` first if it is not up."""
    ensure_env_file()
    settings = load_settings()
    states = {row["service"]: row["state"] for row in manager.status(settings)}
    if any(states.get(name) != "RUNNING" for name in REQUIRED):
        subprocess.run([str(REPO_ROOT / "stack" / "bin" / "stackctl"), "up"], check=True)
    return settings


@pytest.fixture
def pipeline(stack):
    """A pipeline of the test's own (topic, PostgreSQL schema, S3 prefix), removed after it."""
    from testkit.pipeline import Pipeline

    p = Pipeline(stack).create()
    yield p
    p.destroy()


@pytest.fixture(scope="session")
def env(stack) -> Env:
    """Return the configuration the stack runs with (.env plus the environment)."""
    return Env()


def pytest_collection_modifyitems(items):
    """Run the tests that restart the shared stack after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_stack") is not None)


@pytest.fixture(scope="session")
def lake(stack):
    """A SparkSession with the project's configuration, to read the Delta tables back."""
    from jobs.session import build_spark

    spark = build_spark("integration-tests", Env(), master="local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


@pytest.fixture(scope="session")
def dag_runner(stack):
    """Runs the project's DAGs with dag.test() against the stack's Airflow database."""
    from tests.integration.airflow_kit import DagRunner, use_airflow_environment

    use_airflow_environment(stack)
    return DagRunner(stack)


@pytest.fixture(scope="module")
def spark_cluster(stack, tmp_path_factory):
    """A real Spark standalone master and worker on 127.0.0.1:7077, for one test module."""
    from stack.spark_cluster import StandaloneCluster

    with StandaloneCluster(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster
