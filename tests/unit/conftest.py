"""A session-scoped local SparkSession for the transformation tests (the PySpark testing
guide's way): local[2], no UI, few shuffle partitions, UTC. No jars: the pure
transformations use Spark's built-in functions only."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def spark():
    """Return a local SparkSession shared by the unit tier."""
    from pyspark.sql import SparkSession

    from jobs.scratch import jvm_tmpdir, spark_scratch_conf

    builder = SparkSession.builder
    # its temporary files where the stack's drivers keep theirs (jobs/scratch.py)
    scratch = spark_scratch_conf(os.environ.get("SPARK_SCRATCH_DIR"), "-Duser.timezone=UTC")
    for key, value in scratch.items():
        builder = builder.config(key, value)
    with jvm_tmpdir(scratch):
        session = (builder.master("local[2]").appName("unit-tests")
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "2")
                   .config("spark.sql.session.timeZone", "UTC")
                   .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
                   .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
