"""The integration tiers share one running local stack; this starts it when it is down."""

from __future__ import annotations

import fcntl
import os
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
    # two pytest processes at once (or pytest-xdist's workers): the first brings the stack up,
    # the others wait for it
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(os.open(settings.home / "tests-up.lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


@pytest.fixture
def another_pipeline(stack):
    """A second pipeline of the test's own, for a test that runs two streams at once."""
    from testkit.pipeline import Pipeline

    p = Pipeline(stack).create()
    yield p
    p.destroy()


@pytest.fixture(scope="session")
def env(stack) -> Env:
    """Return the configuration the stack runs with (.env plus the environment)."""
    return Env()


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(config, items):
    """Run the tests that stop or restart a shared service after every other test, and never
    beside another: a PostgreSQL or object store outage would fail whatever ran next to it."""
    items.sort(key=lambda item: item.get_closest_marker("exclusive") is not None)
    workers = config.getoption("numprocesses", None)  # pytest-xdist's -n, if it is installed
    exclusive = [item.nodeid for item in items if item.get_closest_marker("exclusive")]
    if workers and exclusive:
        raise pytest.UsageError(
            f"{len(exclusive)} selected tests stop or restart a shared service and must run alone, not under "
            f"-n {workers}: leave them out with -m 'not exclusive', and run them without -n, e.g. {exclusive[0]}")


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
