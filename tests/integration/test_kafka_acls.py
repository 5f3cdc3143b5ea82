"""Kafka authenticates every client (SASL/SCRAM-SHA-512) and authorises each principal by ACL
(issue 13, point 9), against the real broker. Every write and delete is attempted on topics of
the test's own; the pipeline's topic is only described, and attacked by principals the broker
refuses (the attempt is the test: it must fail)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ConfigResource,
    ConfigResourceType,
    NewTopic,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAuthorizationFailedError

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(stack):
    """An ad hoc topic (the stream principal may read it) and a plain one, one record each."""
    name = uuid.uuid4().hex[:10]
    adhoc, other = f"{stack.kafka_adhoc_topic_prefix}it-acl-{name}", f"it-acl-{name}"
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    admin.create_topics([NewTopic(adhoc, 1, 1), NewTopic(other, 1, 1)])
    producer = KafkaProducer(**stack.kafka_login("admin").client_kwargs(), acks="all")
    for topic in (adhoc, other):
        producer.send(topic, b"written by the admin").get(timeout=30)
    producer.close()
    yield adhoc, other
    admin.delete_topics([adhoc, other])
    admin.close()


def records(stack, login, topic: str) -> int:
    """Return how many records `login` reads from `topic` (an unauthorised reader gets none)."""
    tp = TopicPartition(topic, 0)
    admin = KafkaConsumer(**stack.kafka_login("admin").client_kwargs(), request_timeout_ms=10_000)
    try:
        held = admin.end_offsets([tp])[tp]  # what the topic holds, as the admin sees it
    finally:
        admin.close()
    consumer = KafkaConsumer(**login.client_kwargs(), enable_auto_commit=False, request_timeout_ms=10_000)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = 0
        for _ in range(5):  # a bounded number of polls: the one record comes in the first
            got += sum(len(batch) for batch in consumer.poll(timeout_ms=1000).values())
            if got >= held:  # a reader that got them all: no need to wait out the polls
                break
        return got
    finally:
        consumer.close()


def produce(login, topic: str) -> None:
    producer = KafkaProducer(**login.client_kwargs(), acks="all", max_block_ms=10_000)
    try:
        producer.send(topic, b"x").get(timeout=30)
    finally:
        producer.close(timeout=5)


def test_unauthenticated_and_wrong_password_clients_are_refused(stack):
    for kwargs in ({"bootstrap_servers": stack.kafka_bootstrap},  # no SASL at all
                   dataclasses.replace(stack.kafka_login("producer"),  # its own password, reversed
                                       password=stack.kafka_users["producer"][1][::-1]).client_kwargs(),
                   # the broker's PLAIN login is for its internal and controller listeners only
                   {**stack.kafka_broker_kwargs(), "bootstrap_servers": stack.kafka_bootstrap},
                   # and SCRAM users cannot use those
                   {**stack.kafka_login("admin").client_kwargs(),
                    "bootstrap_servers": f"127.0.0.1:{stack.kafka_internal_port}"},
                   {"bootstrap_servers": f"127.0.0.1:{stack.kafka_controller_port}"}):
        with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
            KafkaAdminClient(**kwargs, request_timeout_ms=5000, bootstrap_timeout_ms=3000).close()


def test_each_principal_has_exactly_its_acls(stack):
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    try:
        acls, error = admin.describe_acls(ACLFilter(
            principal=None, host="*", operation=ACLOperation.ANY, permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)))
    finally:
        admin.close()
    assert error.errno == 0
    producer, stream = (f"User:{stack.kafka_users[r][0]}" for r in ("producer", "stream"))
    got = {(a.principal, a.operation.name, a.permission_type.name, a.resource_pattern.resource_type.name,
            a.resource_pattern.resource_name, a.resource_pattern.pattern_type.name)
           for a in acls if a.principal in {producer, stream}}
    topic, adhoc = stack.kafka_topic, stack.kafka_adhoc_topic_prefix
    assert got == {
        (producer, "WRITE", "ALLOW", "TOPIC", topic, "LITERAL"),
        (producer, "DESCRIBE", "ALLOW", "TOPIC", topic, "LITERAL"),
        (stream, "READ", "ALLOW", "TOPIC", topic, "LITERAL"),
        (stream, "DESCRIBE", "ALLOW", "TOPIC", topic, "LITERAL"),
        (stream, "READ", "ALLOW", "TOPIC", adhoc, "PREFIXED"),
        (stream, "DESCRIBE", "ALLOW", "TOPIC", adhoc, "PREFIXED"),
        (stream, "READ", "ALLOW", "GROUP", "iot-stream", "PREFIXED"),
    }


def test_the_producer_may_only_write_the_pipeline_topic(stack, topics):
    adhoc, other = topics
    producer = stack.kafka_login("producer")
    for topic in (adhoc, other):
        with pytest.raises(TopicAuthorizationFailedError):
            produce(producer, topic)
        assert records(stack, producer, topic) == 0  # it cannot read either
    admin = KafkaAdminClient(**producer.client_kwargs(), request_timeout_ms=10_000)
    try:
        # it sees no topic but its own, and can neither delete, reconfigure nor create one
        assert admin.list_topics() == [stack.kafka_topic]
        with pytest.raises(TopicAuthorizationFailedError):
            admin.delete_topics([stack.kafka_topic])
        result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, stack.kafka_topic,
                                                     configs={"retention.ms": "1000"})], raise_on_unknown=False)
        assert "TopicAuthorizationFailedError" in str(result["topic"][stack.kafka_topic])
        with pytest.raises(TopicAuthorizationFailedError):
            admin.create_topics([NewTopic(f"it-acl-evil-{uuid.uuid4().hex[:6]}", 1, 1)])
    finally:
        admin.close()


def test_the_stream_may_only_read_the_pipeline_and_adhoc_topics(stack, topics):
    adhoc, other = topics
    stream = stack.kafka_login("stream")
    assert records(stack, stream, adhoc) == 1
    assert records(stack, stream, other) == 0
    assert records(stack, stack.kafka_login("admin"), other) == 1  # the record is there
    with pytest.raises(KafkaError):  # no write anywhere (refused at its idempotent producer id)
        produce(stream, adhoc)
    admin = KafkaAdminClient(**stream.client_kwargs(), request_timeout_ms=10_000)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            admin.delete_topics([adhoc])
    finally:
        admin.close()
    assert records(stack, stack.kafka_login("admin"), adhoc) == 1  # nothing was written or deleted


def test_the_pipeline_topic_is_stamped_by_the_broker(stack):
    """LogAppendTime: a producer's clock cannot steer the "event_time not in the future" rule,
    which compares event_time with the record's Kafka timestamp."""
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, stack.kafka_topic)])
        assert configs["topic"][stack.kafka_topic]["message.timestamp.type"]["value"] == "LogAppendTime"
    finally:
        admin.close()
