"""Where records go: Kafka (the real sink), memory (tests), stdout (--dry-run)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from common.kafka import KafkaLogin

log = logging.getLogger(__name__)


class SinkUnavailable(RuntimeError):
    """The sink cannot accept records (e.g. Kafka unreachable for longer than max.block.ms)."""


class EventSink(Protocol):
    """Sends keyed records and reports what was delivered."""

    sent: int
    acked: int
    failed: int

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one record for delivery."""

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued record is delivered or failed; False on timeout."""

    def close(self) -> None:
        """Release the sink's resources."""


def topic_is_unknown(login: KafkaLogin, topic: str) -> bool:
    """Return whether the broker answers one metadata request for `topic` with "unknown topic".
    The producer's own wait for a topic's metadata retries that answer until max_block_ms (15 s)
    before it gives up; an authorisation refusal or anything else is left to that wait, which
    reports it at once."""
    from kafka import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    admin = KafkaAdminClient(**login.client_kwargs(), client_id="iot-producer-topic-check", request_timeout_ms=10_000)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    return any(t.get("error_code") == UnknownTopicOrPartitionError.errno for t in described)


class KafkaSink:
    """kafka-python producer: key = sensor_id, acks=all, idempotence, zstd, batched.

    Delivery callbacks count acknowledgements and failures; a failure is logged with its
    cause, and the process exits non-zero when any record failed.
    """

    def __init__(self, login: KafkaLogin, topic: str, *, linger_ms: int = 100,
                 batch_size: int = 1024 * 1024, compression: str | None = "zstd",
                 client_id: str = "iot-producer",
                 max_block_ms: int = 15_000) -> None:
        from kafka import KafkaProducer
        from kafka.errors import (
            KafkaTimeoutError,
            SaslAuthenticationFailedError,
            TopicAuthorizationFailedError,
            UnsupportedSaslMechanismError,
        )

        self.topic = topic
        self.sent = self.acked = self.failed = 0
        self.errors: dict[str, int] = {}
        self._partitions: dict[bytes, int] = {}
        self.settings = {
            "acks": "all", "enable_idempotence": True, "compression_type": compression,
            "linger_ms": linger_ms, "batch_size": batch_size,
            "max_in_flight_requests_per_connection": 5, "delivery_timeout_ms": 120_000,
            # How long send() may block on missing metadata or a full buffer before failing.
            "max_block_ms": max_block_ms,
        }
        unreachable = (f"cannot reach Kafka at {login.bootstrap_servers} (--bootstrap-servers / "
                       "KAFKA_BOOTSTRAP_SERVERS); is the stack up? `make up` starts it")
        try:
            self.producer = KafkaProducer(**login.client_kwargs(), client_id=client_id, **self.settings)
        except KafkaTimeoutError:  # kafka-python 3: "Unable to bootstrap from ..."
            raise ConnectionError(unreachable) from None
        except (SaslAuthenticationFailedError, UnsupportedSaslMechanismError) as exc:
            raise ConnectionError(f"Kafka refused the login of {login.user!r}: {exc} (KAFKA_PRODUCER_USER / "
                                  "KAFKA_PRODUCER_PASSWORD in .env)") from None
        missing = "it does not exist (the broker does not auto-create topics; `make up` creates KAFKA_TOPIC)"
        try:
            unknown = topic_is_unknown(login, topic)  # at once, not after max_block_ms of retries
        except KafkaTimeoutError:
            self.producer.close(timeout=1)
            raise ConnectionError(unreachable) from None
        if unknown:
            self.producer.close(timeout=1)
            raise ConnectionError(f"topic {topic!r} has no metadata: {missing}")
        try:
            self.producer.partitions_for(topic)
        except KafkaTimeoutError:
            self.producer.close(timeout=1)
            waited = max_block_ms / 1000
            raise ConnectionError(f"topic {topic!r} has no metadata after {waited:.0f}s: {missing}") from None
        except TopicAuthorizationFailedError:
            self.producer.close(timeout=1)
            raise ConnectionError(f"{login.user!r} may not write topic {topic!r}: the producer principal writes "
                                  "KAFKA_TOPIC only") from None

    def _on_delivery(self, result) -> None:
        # Runs on kafka-python's single sender thread, the only writer of acked/failed
        # (the main thread only reads them), so no lock is needed.
        if not isinstance(result, BaseException):
            self.acked += 1
            return
        name = type(result).__name__
        self.failed += 1
        self.errors[name] = self.errors.get(name, 0) + 1
        if self.errors[name] == 1:
            log.error("delivery to %s failed: %s: %s", self.topic, name, result)

    def partition_for(self, key: bytes) -> int:
        """Return the key's partition, as kafka-python's (and Java's) default partitioner
        computes it: murmur2(key) & 0x7fffffff mod the partition count.

        Computed once per key: the pure-Python murmur2 was a fifth of send()'s cost, and a
        fleet has few keys. A topic whose partition count grows is picked up on restart.
        """
        partition = self._partitions.get(key)
        if partition is None:
            from kafka.partitioner.default import murmur2

            partitions = sorted(self.producer.partitions_for(self.topic))
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            self._partitions[key] = partition
        return partition

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one record; its outcome reaches the delivery callbacks."""
        from kafka.errors import KafkaTimeoutError

        try:
            future = self.producer.send(self.topic, key=key, value=value,
                                        partition=self.partition_for(key))
        except KafkaTimeoutError as exc:
            raise SinkUnavailable(f"Kafka did not accept a record for {self.topic} within "
                                  f"max.block.ms: {exc}") from exc
        self.sent += 1
        future.add_both(self._on_delivery)

    def flush(self, timeout_s: float) -> bool:
        """Wait for every queued record; return False if some are still pending."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            log.error("flush timed out after %.0fs with %d records unconfirmed", timeout_s,
                      self.sent - self.acked - self.failed)
            return False
        except KafkaError as exc:
            # kafka-python 3.0.12 can raise UnknownError('Future not done') here after a fatal
            # error aborted the batches; the outcome of the pending records is then unknown.
            log.error("flush failed with %d records unconfirmed: %s: %s",
                      self.sent - self.acked - self.failed, type(exc).__name__, exc)
            return False
        return True

    def close(self) -> None:
        """Close the producer (records not yet delivered are reported by flush)."""
        from kafka.errors import KafkaError

        try:
            self.producer.close(timeout=5)
        except KafkaError as exc:
            # close() flushes again and can hit the same kafka-python race as flush(); the
            # records it concerns are already counted as unconfirmed in the summary.
            log.error("closing the producer failed with %d records unconfirmed: %s: %s",
                      self.sent - self.acked - self.failed, type(exc).__name__, exc)


class MemorySink:
    """Keeps records in a list: the simulator's logic is tested without a broker."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.sent = self.acked = self.failed = 0

    def send(self, key: bytes, value: bytes) -> None:
        """Append the record; it counts as delivered."""
        self.records.append((key, value))
        self.sent += 1
        self.acked += 1

    def flush(self, timeout_s: float) -> bool:
        """Nothing is pending in memory."""
        return True

    def close(self) -> None:
        """Nothing to release."""


class StdoutSink(MemorySink):
    """Writes each record's value as one line on stdout (--dry-run)."""

    def send(self, key: bytes, value: bytes) -> None:
        """Write the value and a newline (raw bytes: bad events stay bad)."""
        sys.stdout.buffer.write(value + b"\n")
        self.sent += 1
        self.acked += 1

    def flush(self, timeout_s: float) -> bool:
        """Flush stdout."""
        sys.stdout.buffer.flush()
        return True
