"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# The JVM options of every Spark driver the tests start (their SparkSessions, the jobs they
# spark-submit, the batch jobs their dag.test() runs), added by spark-submit's launcher to the
# driver's own: the JIT's first compiler only, as the stream's driver has (common/jvm.py). A
# test's driver handles thousands of records and lives seconds; with C2 a small aggregates run
# took 25.4 CPU s (18 s), with C1 alone 17.7 (15.2 s). The pipeline's batch jobs keep C2, which
# pays off on an hour of records.
TEST_DRIVER_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def pytest_configure(config) -> None:
    """Keep the tests' temporary folders in the stack's scratch folder (stackctl sets
    SPARK_SCRATCH_DIR, jobs/scratch.py), not in /tmp: the next run clears them. Give the
    tests' Spark drivers TEST_DRIVER_JAVA_OPTIONS."""
    scratch = os.environ.get("SPARK_SCRATCH_DIR")
    if scratch and not config.option.basetemp:
        config.option.basetemp = str(Path(scratch) / "pytest")
    opts = os.environ.get("SPARK_SUBMIT_OPTS", "")
    if TEST_DRIVER_JAVA_OPTIONS not in opts:
        os.environ["SPARK_SUBMIT_OPTS"] = f"{opts} {TEST_DRIVER_JAVA_OPTIONS}".strip()


@pytest.fixture
def unique_name():
    """Return a factory of names no other test (and not the running pipeline) uses."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}"

    return make
