"""Kafka's principals, their ACLs and the pipeline topic, set up as the broker's own principal.

`make up` runs ensure() for the local stack (stack/init.py); the Docker stack's kafka-init
service runs this module:

    KAFKA_ADMIN_BOOTSTRAP=kafka:19094 python -m stack.kafka_admin

It logs in on the broker's own listener (SASL/PLAIN, user `broker`, KAFKA_BROKER_PASSWORD), which
needs no SCRAM user, so it works on a cluster formatted before authentication existed. Then,
idempotently: the SCRAM-SHA-512 users of common/kafka.py's roles (their passwords set anew), their
ACLs, and the pipeline topic with explicit partitions, retention and broker timestamps.
Passwords come from the environment, never a command line.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from common.env import ConfigError, Env, MissingSetting
from common.kafka import RECONNECT_BACKOFF_MAX_MS, ROLES, STREAM_GROUP_PREFIX, KafkaLogin
from common.pipeline import DEFAULT_TOPIC, PipelineNames

log = logging.getLogger(__name__)

BROKER_USER = "broker"
# The broker stamps each record with its own clock (LogAppendTime): a producer's clock cannot
# steer the "event_time not in the future" rule, which compares event_time with that stamp.
PIPELINE_TOPIC_CONFIGS = {"cleanup.policy": "delete", "message.timestamp.type": "LogAppendTime"}


@dataclass(frozen=True)
class KafkaSetup:
    """What the broker must hold: principals, the pipeline topic and its settings."""

    bootstrap: str  # the broker's own (PLAIN) listener
    broker_password: str = field(repr=False)
    users: dict = field(repr=False)  # role -> (user, password)
    topic: str = DEFAULT_TOPIC
    partitions: int = 6
    retention_hours: int = 168
    adhoc_prefix: str = "iot.adhoc."

    @classmethod
    def from_env(cls, env: Env, bootstrap: str) -> KafkaSetup:
        """Return the setup from the environment / .env."""
        return cls(bootstrap=bootstrap,
                   broker_password=env.require("KAFKA_BROKER_PASSWORD", "run `make up` to generate it"),
                   users={role: (login.user, login.password) for role in ROLES
                          for login in (KafkaLogin.from_env(env, role),)},
                   topic=PipelineNames.from_env(env).topic,
                   partitions=env.get_int("KAFKA_TOPIC_PARTITIONS", 6),
                   retention_hours=env.get_int("KAFKA_TOPIC_RETENTION_HOURS", 168),
                   adhoc_prefix=env.get("KAFKA_ADHOC_TOPIC_PREFIX", "iot.adhoc."))

    def broker_kwargs(self) -> dict[str, str | int]:
        """Return kafka-python keywords for the broker's principal (a super user)."""
        return {"bootstrap_servers": self.bootstrap, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": BROKER_USER, "sasl_plain_password": self.broker_password,
                "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}


def acls(setup: KafkaSetup) -> list:
    """Return the ACLs of the pipeline's principals (the admin is a super user): the producer
    writes the pipeline's topic; the stream reads it and the ad hoc topics and uses its groups."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    topic = ResourcePattern(ResourceType.TOPIC, setup.topic, ACLResourcePatternType.LITERAL)
    adhoc = ResourcePattern(ResourceType.TOPIC, setup.adhoc_prefix, ACLResourcePatternType.PREFIXED)
    groups = ResourcePattern(ResourceType.GROUP, STREAM_GROUP_PREFIX, ACLResourcePatternType.PREFIXED)
    producer, stream = setup.users["producer"][0], setup.users["stream"][0]

    def allow(user: str, operation, resource) -> ACL:
        return ACL(f"User:{user}", "*", operation, ACLPermissionType.ALLOW, resource)

    return [allow(producer, ACLOperation.WRITE, topic), allow(producer, ACLOperation.DESCRIBE, topic),
            allow(stream, ACLOperation.READ, topic), allow(stream, ACLOperation.DESCRIBE, topic),
            allow(stream, ACLOperation.READ, adhoc), allow(stream, ACLOperation.DESCRIBE, adhoc),
            allow(stream, ACLOperation.READ, groups)]


def ensure(setup: KafkaSetup, timeout_ms: int = 30_000) -> bool:
    """Create or update the SCRAM users, their ACLs and the pipeline topic; return True if the
    topic was created. Raise RuntimeError naming what the broker refused."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic, ScramMechanism, UserScramCredentialUpsertion

    admin = KafkaAdminClient(**setup.broker_kwargs(), client_id="stack-kafka-admin", bootstrap_timeout_ms=timeout_ms)
    try:
        errors = admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion(user, ScramMechanism.SCRAM_SHA_512, password, iterations=8192)
            for user, password in setup.users.values()])
        if failed := {user: error for user, error in errors.items() if error}:
            raise RuntimeError(f"creating Kafka's SCRAM users failed: {failed}")
        if failed := admin.create_acls(acls(setup))["failed"]:
            raise RuntimeError(f"creating Kafka's ACLs failed: {failed}")
        if setup.topic in admin.list_topics():
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, setup.topic, configs=PIPELINE_TOPIC_CONFIGS)])
            return False
        admin.create_topics([NewTopic(
            setup.topic, num_partitions=setup.partitions, replication_factor=1,
            topic_configs={"retention.ms": str(setup.retention_hours * 3_600_000), **PIPELINE_TOPIC_CONFIGS})])
        return True
    finally:
        admin.close()


def main() -> int:
    """Set Kafka up from the environment (the Docker stack's kafka-init); return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    env = Env()
    try:
        setup = KafkaSetup.from_env(env, env.get("KAFKA_ADMIN_BOOTSTRAP", "127.0.0.1:9094"))
    except (MissingSetting, ConfigError) as exc:
        print(f"kafka_admin: {exc}", file=sys.stderr)
        return 2
    created = ensure(setup, timeout_ms=120_000)
    log.info("users %s, their ACLs and topic %s (%s) ready", ", ".join(u for u, _ in setup.users.values()),
             setup.topic, "created" if created else "existed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
