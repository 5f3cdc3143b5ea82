"""The producer against the real broker, each test on a topic of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from common.probes import wait_for
from testkit.pipeline import producer_env

pytestmark = pytest.mark.integration


@pytest.fixture
def make_topic(stack, unique_name):
    """Create topics of the test's own; delete them afterwards."""
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    created = []

    def make(partitions: int = 6, **configs: str) -> str:
        name = unique_name("it-producer")
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                      topic_configs=configs)])
        created.append(name)
        return name

    yield make
    if created:
        admin.delete_topics(created)
    admin.close()


def producer_cmd(stack, topic: str, *args: str) -> list[str]:
    # --bad-rate 0 unless a test asks otherwise: the default comes from PRODUCER_BAD_RATE
    bad = [] if "--bad-rate" in args else ["--bad-rate", "0"]
    return [sys.executable, "-m", "producer", "--topic", topic,
            "--bootstrap-servers", stack.kafka_bootstrap, "--no-progress", *bad, *args]


def summary_of(stderr: str) -> dict:
    line = next(x for x in stderr.splitlines() if x.startswith("PRODUCER_SUMMARY "))
    return json.loads(line.removeprefix("PRODUCER_SUMMARY "))


def end_offsets(stack, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**stack.kafka_login("admin").client_kwargs())
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return consumer.end_offsets(parts)
    finally:
        consumer.close()


def consume_all(stack, topic: str) -> list:
    """Return every record of `topic` from the beginning to its current end offsets."""
    ends = end_offsets(stack, topic)
    consumer = KafkaConsumer(**stack.kafka_login("admin").client_kwargs(), enable_auto_commit=False)
    consumer.assign(list(ends))
    consumer.seek_to_beginning(*ends)
    got = []
    remaining = {tp for tp, end in ends.items() if end > 0}

    def drained() -> bool:
        for batch in consumer.poll(timeout_ms=1000).values():
            got.extend(batch)
        for tp in list(remaining):
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        return not remaining

    wait_for(f"consuming {topic} to its end offsets", drained, 120)
    consumer.close()
    return got


def test_n_produced_exactly_n_consumed_keyed_and_gap_free(stack, make_topic):
    topic = make_topic(6)
    n = 6000
    result = subprocess.run(producer_cmd(stack, topic, "--count", str(n), "--rate", "0", "--seed", "21",
                                         "--sensors", "40"), capture_output=True, text=True, timeout=300,
                            env=producer_env(stack))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stderr)
    assert (summary["sent"], summary["acked"], summary["failed"]) == (n, n, 0)

    records = consume_all(stack, topic)
    assert len(records) == n
    seqs = defaultdict(list)
    partition_of = {}
    for r in records:
        event = json.loads(r.value)
        assert r.key == event["sensor_id"].encode()
        # one sensor, one partition: its readings stay in order
        assert partition_of.setdefault(event["sensor_id"], r.partition) == r.partition
        seqs[event["sensor_id"]].append((r.offset, event["seq"]))
    assert len(seqs) == 40
    for sensor, pairs in seqs.items():
        assert [seq for _, seq in sorted(pairs)] == list(range(1, len(pairs) + 1)), sensor
    assert len({json.loads(r.value)["event_id"] for r in records}) == n


def test_bad_events_reach_kafka_counted_by_category(stack, make_topic):
    topic = make_topic(3)
    result = subprocess.run(producer_cmd(stack, topic, "--count", "2000", "--rate", "0", "--seed", "5",
                                         "--bad-rate", "0.2"), capture_output=True, text=True, timeout=300,
                            env=producer_env(stack))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stderr)
    records = consume_all(stack, topic)
    assert len(records) == 2000 == summary["valid"] + sum(summary["bad"].values())
    undecodable = sum(1 for r in records if not _decodes(r.value))
    assert undecodable == summary["bad"]["invalid_utf8"]


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_sigterm_mid_run_flushes_and_loses_no_acknowledged_event(stack, make_topic):
    topic = make_topic(6)
    proc = subprocess.Popen(producer_cmd(stack, topic, "--rate", "3000", "--seed", "8"),
                            stderr=subprocess.PIPE, text=True, env=producer_env(stack))
    try:
        wait_for("3000 events on the topic", lambda: sum(end_offsets(stack, topic).values()) >= 3000, 60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    summary = summary_of(stderr)
    assert summary["signal"] == "SIGTERM"
    assert summary["failed"] == 0
    assert summary["acked"] == summary["sent"] >= 3000
    records = consume_all(stack, topic)
    assert len(records) == summary["acked"]
    assert len({json.loads(r.value)["event_id"] for r in records}) == summary["acked"]


def test_failed_deliveries_make_the_process_exit_non_zero(stack, make_topic):
    # The broker rejects records larger than the topic's max.message.bytes.
    topic = make_topic(1, **{"max.message.bytes": "1500"})
    result = subprocess.run(producer_cmd(stack, topic, "--count", "50", "--rate", "0", "--seed", "1",
                                         "--bad-rate", "1", "--bad-categories", "oversized",
                                         "--compression", "none", "--linger-ms", "0"),
                            capture_output=True, text=True, timeout=300, env=producer_env(stack))
    assert result.returncode == 1, result.stderr[-3000:]
    summary = summary_of(result.stderr)
    assert summary["acked"] == 0
    # kafka-python 3.0.12 aborts the batches after this fatal error, often before their
    # futures complete: such records are reported as unconfirmed, never as delivered.
    assert summary["failed"] + summary["unconfirmed"] == 50
    assert "MessageSizeTooLargeError" in result.stderr


def test_missing_topic_is_named(stack, unique_name):
    topic = unique_name("absent")
    result = subprocess.run(producer_cmd(stack, topic, "--count", "1"), capture_output=True, text=True,
                            timeout=120, env=producer_env(stack))
    assert result.returncode == 2
    assert f"topic '{topic}' has no metadata" in result.stderr


def test_the_pipeline_producer_may_not_write_another_topic(stack, make_topic):
    """As itself (not the tests' admin login), the producer is refused any topic but KAFKA_TOPIC,
    with a message that says so and exit 2."""
    topic = make_topic(1)
    result = subprocess.run(producer_cmd(stack, topic, "--count", "1"), capture_output=True, text=True,
                            timeout=120, env={**os.environ, "KAFKA_PRODUCER_USER": stack.kafka_users["producer"][0],
                                              "KAFKA_PRODUCER_PASSWORD": stack.kafka_users["producer"][1]})
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"'iot-producer' may not write topic '{topic}'" in result.stderr
