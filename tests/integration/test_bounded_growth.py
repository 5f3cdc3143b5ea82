"""What grows with the stream's uptime has a bound (issue 14, point 5), on the real object
store: a Delta table of the stream keeps its commit files for DELTA_LOG_RETENTION_HOURS,
including a table made before that setting existed."""

from __future__ import annotations

import pytest

from jobs.sinks import DeltaSink
from testkit.pipeline import S3Trace

pytestmark = pytest.mark.integration


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


def test_a_commit_costs_the_same_lists_however_long_the_log(stack, lake, pipeline, tmp_path):
    # Delta's S3 log store listed a table's whole _delta_log (1,000 names a page) several times
    # a commit, so every commit cost more the longer the log grew: the tables' aging. Ours
    # (jobs/jvm/.../StartAfterS3LogStore.java) lists from the commit's version on.
    path = pipeline.path("bronze")
    rows = lake.createDataFrame([("a", "2026-11-30")], "value string, kafka_date string")
    sink = DeltaSink(path)
    for batch in range(2):
        sink.write(rows, "query-1", batch)
    log_prefix = path.removeprefix(f"s3a://{stack.bucket}/") + "/_delta_log"

    def lists_of_one_commit(batch: int) -> int:
        with S3Trace(stack, pipeline, tmp_path) as trace:
            assert sink.write(rows, "query-1", batch) is True
        return trace.count("ListObjectsV2", log_prefix)

    short_log = lists_of_one_commit(2)
    # 3,000 objects in the log folder that sort before every commit file, as a long log's old
    # commits do (their names start with "." so that Delta reads none of them): three more
    # pages for a listing of the whole folder
    s3 = pipeline.s3()
    for i in range(3000):
        s3.put_object(Bucket=stack.bucket, Key=f"{log_prefix}/.old-{i:05d}", Body=b"")
    long_log = lists_of_one_commit(3)
    assert 1 <= short_log == long_log
    assert lake.read.format("delta").load(path).count() == 4
    assert [r.version for r in lake.sql(f"describe history delta.`{path}`").collect()] == [3, 2, 1, 0]
