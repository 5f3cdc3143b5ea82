"""A session-scoped local SparkSession for the transformation tests (the PySpark testing
guide's way): local[2], no UI, few shuffle partitions, UTC. No jars: the pure
transformations use Spark's built-in functions only."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    """Return a local SparkSession shared by the unit tier."""
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("unit-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
