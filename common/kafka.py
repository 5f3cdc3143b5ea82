"""How the project's Kafka clients log in: SASL/SCRAM-SHA-512, one principal per role.

The broker refuses unauthenticated clients and authorises each principal by ACL (`make up`
creates them, stack/init.py):
- producer: writes the pipeline's topic, nothing else;
- stream: reads the pipeline's topic and the ad hoc topics (KAFKA_ADHOC_TOPIC_PREFIX), and
  uses its consumer groups (prefix iot-stream); the lag reader logs in as the stream;
- admin: administration (topics, their configs, users, ACLs): a super user.
Credentials come from the environment / .env (KAFKA_<ROLE>_USER, KAFKA_<ROLE>_PASSWORD).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.env import Env

ROLES = ("producer", "stream", "admin")
MECHANISM = "SCRAM-SHA-512"
SECURITY_PROTOCOL = "SASL_PLAINTEXT"  # loopback only; TLS would add nothing a local user lacks
STREAM_GROUP_PREFIX = "iot-stream"
DEFAULT_USERS = {"producer": "iot-producer", "stream": "iot-stream", "admin": "iot-admin"}
# The longest a client waits between two attempts to reach a broker it lost: the Java client's
# default. kafka-python's (30 s) doubles the wait after each refused attempt, so a broker back
# 12 s after a crash was reached 18 s later still (by the producer, and by readiness probes).
RECONNECT_BACKOFF_MAX_MS = 1000


@dataclass(frozen=True)
class KafkaLogin:
    """Where the broker is, and who logs in to it."""

    bootstrap_servers: str
    user: str
    password: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Env, role: str) -> KafkaLogin:
        """Return the login of `role` (producer, stream, admin) from the environment / .env."""
        if role not in ROLES:
            raise ValueError(f"unknown Kafka role {role!r}; one of {', '.join(ROLES)}")
        name = role.upper()
        return cls(env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                   env.get(f"KAFKA_{name}_USER", DEFAULT_USERS[role]),
                   env.require(f"KAFKA_{name}_PASSWORD", "run `make up` to generate it"))

    def client_kwargs(self) -> dict[str, str | int]:
        """Return kafka-python's connection keywords (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        return {"bootstrap_servers": self.bootstrap_servers, "security_protocol": SECURITY_PROTOCOL,
                "sasl_mechanism": MECHANISM, "sasl_plain_username": self.user,
                "sasl_plain_password": self.password, "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}

    def spark_options(self) -> dict[str, str]:
        """Return the Spark Kafka source's connection options (set in code, never on a command line)."""
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{_jaas_quote(self.user)}" password="{_jaas_quote(self.password)}";')
        return {"kafka.bootstrap.servers": self.bootstrap_servers, "kafka.security.protocol": SECURITY_PROTOCOL,
                "kafka.sasl.mechanism": MECHANISM, "kafka.sasl.jaas.config": jaas}


def _jaas_quote(value: str) -> str:
    """Return `value` escaped for a double-quoted JAAS option."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
