"""One writer per Delta table, checkpoint and schema; health rows read per stream; maintenance
that cannot crash-loop the stream (issue 13, points 1 and 3), against the real PostgreSQL
and, for the stream's own lock, the real job."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import date

import pytest

from common.postgres import committed_end_offsets, connection, lake_maintenance_outcome
from jobs.maintenance import LakeMaintenance, WriterLock, writer_resources
from orchestration.retention import request_lake_maintenance
from testkit.pipeline import Pipeline
from testkit.schemas import create_pipeline_schema, drop_pipeline_schema, marts_schema_of

pytestmark = pytest.mark.integration


@pytest.fixture
def schema(stack):
    name = f"t{uuid.uuid4().hex[:10]}"
    create_pipeline_schema(stack, name, marts=True)
    yield name
    drop_pipeline_schema(stack, name)


def writer_connect(stack) -> dict:
    return {"host": stack.pg_host, "port": stack.pg_port, "dbname": stack.pg_db, "user": stack.pg_writer,
            "password": stack.pg_writer_password}


def test_a_second_writer_of_a_table_is_refused_however_the_path_is_written(stack):
    prefix = f"s3a://{stack.bucket}/tests/lock-{uuid.uuid4().hex[:8]}"
    first = WriterLock(writer_connect(stack), writer_resources(
        f"{prefix}/checkpoint-a", {"bronze": f"{prefix}/bronze", "quarantine": f"{prefix}/quarantine-a"},
        stack.pg_db, "schema_a"), timeout_seconds=1, application_name="test-first-writer")
    # another stream: its own checkpoint, schema and quarantine, but the same bronze table
    second = WriterLock(writer_connect(stack), writer_resources(
        f"{prefix}/checkpoint-b", {"bronze": f"s3://{stack.bucket}//tests/{prefix.rsplit('/', 1)[1]}/bronze/",
                                   "quarantine": f"{prefix}/quarantine-b"},
        stack.pg_db, "schema_b"), timeout_seconds=1, application_name="test-second-writer")
    first.acquire()
    try:
        with pytest.raises(TimeoutError, match=rf"the bronze table {prefix}/bronze is still held by another "
                                               r"writer \(PostgreSQL backend \d+, application test-first-writer"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free once the first writer is gone
    second.release()


def test_the_stream_takes_the_lock_of_each_table_it_writes(stack, tmp_path):
    p = Pipeline(stack).create()
    try:
        holder = WriterLock(writer_connect(stack), {f"delta:s3a://{stack.bucket}/{p.prefix}/quarantine": "quarantine"},
                            timeout_seconds=1, application_name="test-holder")
        holder.acquire()
        try:
            result = subprocess.run(p.stream_args("--available-now"), capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "STREAM_LOCK_TIMEOUT_SECONDS": "2"})
        finally:
            holder.release()
        output = result.stdout + result.stderr  # spark-submit hands the driver's stderr to stdout
        assert result.returncode == 1, output[-3000:]
        assert (f"the quarantine table s3a://{stack.bucket}/{p.prefix}/quarantine is still held by another writer "
                "(PostgreSQL backend") in output
        assert "application test-holder" in output
        assert p.bronze_commits() == 0
        assert p.health_batches() == 0
    finally:
        p.destroy()


def test_a_connection_for_one_piece_of_work_commits_or_rolls_back_then_closes(stack, schema):
    params = writer_connect(stack)
    with connection(params, "test-commits") as conn, conn.cursor() as cur:
        cur.execute(f"create table {schema}.pieces (n int)")
        cur.execute(f"insert into {schema}.pieces values (1)")
        cur.execute("select application_name from pg_stat_activity where pid = pg_backend_pid()")
        assert cur.fetchone() == ("test-commits",)
    assert conn.closed
    def insert_then_fail() -> None:
        with connection(params, "test-rolls-back") as failing, failing.cursor() as cur:
            cur.execute(f"insert into {schema}.pieces values (2)")
            opened.append(failing)
            raise RuntimeError("the work failed")

    opened = []
    with pytest.raises(RuntimeError, match="the work failed"):
        insert_then_fail()
    assert opened[0].closed
    with connection(params, "test-reads") as conn, conn.cursor() as cur:
        cur.execute(f"select n from {schema}.pieces")
        assert cur.fetchall() == [(1,)]  # the first block committed, the second rolled back


def test_health_rows_are_read_per_stream_and_topic(stack, schema):
    with connection(writer_connect(stack), "test-health-rows") as conn:
        with conn.cursor() as cur:
            rows = [  # (query id, batch, query name, topic, seconds ago, end offsets)
                ("q1", 1, "mine", "topic-a", 30, {"0": 10}),
                ("q1", 2, "mine", "topic-a", 20, {"0": 25}),
                ("q2", 7, "other", "topic-a", 5, {"0": 999}),   # another stream, newer
                ("q3", 1, "mine", "topic-b", 1, {"0": 555}),    # same name, another topic, newest
            ]
            for query_id, batch_id, name, topic, ago, offsets in rows:
                cur.execute(f"insert into {schema}.stream_health (query_id, batch_id, query_name, topic, "
                            "batch_started_at, batch_finished_at, rows_in, rows_valid, rows_quarantined, "
                            "rows_inserted, duplicates, rule_failures, validate_ms, postgres_ms, end_offsets) values "
                            "(%s, %s, %s, %s, now() - make_interval(secs => %s), now() - make_interval(secs => %s), "
                            "0, 0, 0, 0, 0, '{}', 1, 1, %s)",
                            (query_id, batch_id, name, topic, ago, ago, json.dumps(offsets)))
        with conn.cursor() as cur:
            # a stream by name and topic (the aggregates' wait), across its checkpoints
            assert committed_end_offsets(cur, schema, query_name="mine", topic="topic-a") == {0: 25}
            assert committed_end_offsets(cur, schema, query_name="other", topic="topic-a") == {0: 999}
            assert committed_end_offsets(cur, schema, query_name="mine", topic="topic-c") == {}
            # one checkpoint's query (the stream's restart), by batch
            assert committed_end_offsets(cur, schema, query_id="q1") == {0: 25}
            assert committed_end_offsets(cur, schema, query_id="q3") == {0: 555}
            assert committed_end_offsets(cur, schema, query_id="q9") == {}
            with pytest.raises(ValueError, match="needs query_id, or query_name and topic"):
                committed_end_offsets(cur, schema, query_name="mine")


def test_a_maintenance_request_that_kills_the_driver_fails_after_its_attempts(stack, schema):
    with connection(writer_connect(stack), "test-maintenance") as conn:
        request = request_lake_maintenance(conn, schema, "mine", date(2026, 1, 1), 168, "test")
        other = request_lake_maintenance(conn, schema, "someone-else", date(2026, 1, 1), 168, "test")
        maintenance = LakeMaintenance(writer_connect(stack), schema, "mine", {}, poll_seconds=10, max_attempts=2)
        for attempt in (1, 2):
            claimed = maintenance._claim()  # a driver claims it ...
            assert (claimed[0], claimed[1], claimed[-1]) == (request, "retention", attempt)
            # ... and dies while carrying it out; the next driver starts:
            assert maintenance.reset_interrupted() == ((1, 0) if attempt == 1 else (0, 1))
        state, result, error = lake_maintenance_outcome(conn, schema, request)
        assert (state, result) == ("failed", None)
        assert error == ("the stream's driver died while carrying it out, 2 times "
                         "(STREAM_MAINTENANCE_MAX_ATTEMPTS=2): its log has the cause")
        assert maintenance._claim() is None  # never claimed again: no crash loop
        assert lake_maintenance_outcome(conn, schema, other)[0] == "pending"  # another stream's is untouched
        with conn, conn.cursor() as cur:
            cur.execute(f"select maintenance_failed_7_days, maintenance_last_error "
                        f"from {marts_schema_of(schema)}.pipeline_health")
            assert cur.fetchone() == (1, error)
