"""`make up` twice is harmless, and data survives `make down` / `make up`; a service that dies
is restarted by the stack's supervisord.

Runs last in the integration tier (see conftest.py): it kills, stops and restarts the shared stack.
"""

from __future__ import annotations

import os
import signal
import subprocess

import boto3
import pytest
from botocore.client import Config
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from common.postgres import connection
from common.probes import wait_for
from stack import manager
from stack.init import kafka_ready
from testkit.pipeline import restore_stack

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]


def _stackctl(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(stack.repo / "stack" / "bin" / "stackctl"), *args],
                          capture_output=True, text=True, timeout=600)


def _topic_holding(stack, topic: str, value: bytes) -> None:
    """Create a one-partition topic holding `value`, acknowledged by the broker."""
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(**stack.kafka_login("admin").client_kwargs(), acks="all")
    producer.send(topic, value).get(timeout=30)
    producer.close()


def _values(stack, topic: str) -> list[bytes]:
    """Read back what the one-partition `topic` holds, from its start."""
    consumer = KafkaConsumer(**stack.kafka_login("admin").client_kwargs(), enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = consumer.poll(timeout_ms=10_000, max_records=10)
    consumer.close()
    return [r.value for r in records.get(tp, [])]


def _delete_topic(stack, topic: str) -> None:
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    admin.delete_topics([topic])
    admin.close()


def test_a_sigkilled_broker_is_restarted_and_serves_what_it_acknowledged(stack, unique_name):
    """supervisord restarts the stack's broker after a SIGKILL (autorestart), and the broker
    still holds an acknowledged record. (What a stream does through a broker's crashes:
    test_stream_faults.py, on a broker of that test's own.)"""
    topic = unique_name("killed")
    _topic_holding(stack, topic, b"acknowledged")
    sup = manager.Supervisor(stack)
    try:
        pid = sup.info("kafka")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for("the broker restarted", lambda: sup.info("kafka")["pid"] not in (0, pid), 120)
        wait_for("the broker to answer", lambda: kafka_ready(stack), 180)
        assert sup.info("kafka")["statename"] == "RUNNING"
        assert _values(stack, topic) == [b"acknowledged"]
    finally:
        restore_stack(stack)  # had the broker not come back
        _delete_topic(stack, topic)


def test_second_up_is_harmless_and_data_survives_down_and_up(stack, unique_name):
    topic, table = unique_name("life"), f"marts.{unique_name('life')}"
    key = f"tests/{unique_name('life')}.txt"
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name=stack.s3_region,
                      aws_access_key_id=stack.s3_access_key, aws_secret_access_key=stack.s3_secret_key,
                      config=Config(s3={"addressing_style": "path"}))

    def pg():
        return connection(stack.pg_params(), "iot-tests", autocommit=True)

    _topic_holding(stack, topic, b"survives")
    with pg() as conn, conn.cursor() as cur:
        cur.execute(f"create table {table} (note text)")
        cur.execute(f"insert into {table} values ('survives')")
    s3.put_object(Bucket=stack.bucket, Key=key, Body=b"survives")
    try:
        pids = {r["service"]: r["pid"] for r in manager.status(stack)}
        again = _stackctl(stack, "up")
        assert again.returncode == 0, again.stderr[-3000:]
        # nothing was restarted by the second `up`
        assert {r["service"]: r["pid"] for r in manager.status(stack)} == pids

        down = _stackctl(stack, "down")
        assert down.returncode == 0, down.stderr[-3000:]
        assert {r["state"] for r in manager.status(stack)} == {"DOWN"}
        up = _stackctl(stack, "up")
        assert up.returncode == 0, up.stderr[-3000:]
        assert {r["state"] for r in manager.status(stack)} == {"RUNNING"}

        with pg() as conn, conn.cursor() as cur:
            cur.execute(f"select note from {table}")
            assert cur.fetchall() == [("survives",)]
        assert s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read() == b"survives"
        assert _values(stack, topic) == [b"survives"]
    finally:
        s3.delete_object(Bucket=stack.bucket, Key=key)
        with pg() as conn, conn.cursor() as cur:
            cur.execute(f"drop table if exists {table}")
        _delete_topic(stack, topic)
