"""What grows with the stream's uptime has a bound (issue 14, point 5), on the real object
store: a Delta table of the stream keeps its commit files for DELTA_LOG_RETENTION_HOURS,
including a table made before that setting existed."""

from __future__ import annotations

import pytest

from jobs.sinks import DeltaSink
from tests.integration.pipeline_kit import Pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(stack):
    p = Pipeline(stack).create()
    yield p
    p.destroy()


def table_properties(spark, path: str) -> dict:
    from delta.tables import DeltaTable

    return dict(DeltaTable.forPath(spark, path).detail().select("properties").collect()[0][0] or {})


def test_an_older_table_gets_the_bounded_log_on_the_stream_s_first_write(lake, pipeline):
    path = pipeline.path("bronze")
    rows = lake.createDataFrame([("a", "2026-11-30")], "value string, kafka_date string")
    # a table as an older version made it: Delta's 30-day log
    lake.conf.unset("spark.databricks.delta.properties.defaults.logRetentionDuration")
    try:
        rows.write.format("delta").partitionBy("kafka_date").save(path)
    finally:
        lake.conf.set("spark.databricks.delta.properties.defaults.logRetentionDuration", "interval 168 hours")
    assert "delta.logRetentionDuration" not in table_properties(lake, path)

    sink = DeltaSink(path, properties={"delta.logRetentionDuration": "interval 168 hours"})
    assert sink.write(rows, "query-1", 0) is True
    assert table_properties(lake, path)["delta.logRetentionDuration"] == "interval 168 hours"
    assert lake.read.format("delta").load(path).count() == 2
    # once per process: the next batch reads no table detail and commits no property again
    versions = lake.sql(f"describe history delta.`{path}`").count()
    assert sink.write(rows, "query-1", 1) is True
    assert lake.sql(f"describe history delta.`{path}`").count() == versions + 1
    # a new table gets it from the session's defaults (jobs/spark_conf.py)
    fresh = pipeline.path("quarantine")
    DeltaSink(fresh, properties={"delta.logRetentionDuration": "interval 168 hours"}).write(rows, "query-1", 0)
    assert table_properties(lake, fresh)["delta.logRetentionDuration"] == "interval 168 hours"
