"""Services of a test's own: a second MinIO or a second Kafka broker (the stack's binaries and
configuration, with the stack's pipeline logins) on free loopback ports, so that a fault test can
stop or kill one without touching the stack's, which every other test and the running pipeline
use. Each is a context manager: started and set up on entry, stopped and its data removed on exit.

    with OwnObjectStore(stack, "faults-t1234") as store:
        store.stop(); store.start()
    with OwnBroker(stack, "t1234") as broker:
        broker.kill(); broker.start()

Their root or broker logins are generated and go through the environment or a private file,
never a command line. As root they run as the stack's service user, like the stack's own, with
their data in a folder of theirs in the stack's state folder."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import subprocess

from common.probes import http_ok, wait_for
from stack.settings import StackSettings


def free_loopback_port() -> int:
    """Return a TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnService:
    """One process of a test's own, in a data folder of its own; subclasses say how it runs."""

    kind = "service"

    def __init__(self, stack: StackSettings, name: str) -> None:
        self.stack = stack
        self.data = stack.state / f"test-{self.kind}-{name}"
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._user = None
        if stack.service_user:
            from stack.service_user import existing

            self._user = existing(stack.service_user)

    # ---- what a subclass gives ----------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def ready(self) -> bool:
        raise NotImplementedError

    def set_up(self) -> None:
        """Runs once, after the first start (create buckets, users, ...)."""

    def prepare(self) -> None:
        """Runs once, before the first start (write configuration, format storage)."""

    # ---- the process ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process (again, after stop or kill) and wait until it serves."""
        assert not self.running(), f"the test's own {self.kind} is running"
        self._proc = subprocess.Popen(self.command(), env=self._env(), stdout=self._log, stderr=subprocess.STDOUT,
                                      umask=0o077, **self._as_user())
        wait_for(f"the test's own {self.kind} ({self.data.name})", self.ready, 120, on_fail=self._tail)

    def stop(self) -> None:
        """SIGTERM (as supervisord stops the stack's) and wait for the process to exit."""
        if self.running():
            self._proc.terminate()
            self._proc.wait(timeout=60)

    def kill(self) -> int:
        """SIGKILL the process, wait for it to go, and return its pid."""
        assert self.running(), f"the test's own {self.kind} is not running"
        self._proc.kill()
        self._proc.wait(timeout=60)
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _as_user(self) -> dict:
        return {"user": self._user.uid, "group": self._user.gid, "extra_groups": []} if self._user else {}

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.data), **self.environment()}

    def _tail(self) -> str:
        return (self.data / "service.log").read_text(errors="replace")[-3000:]

    def __enter__(self):
        self.data.mkdir(mode=0o700)
        if self._user:
            shutil.chown(self.data, self._user.uid, self._user.gid)
        self._log = os.fdopen(os.open(self.data / "service.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        try:
            self.prepare()
            self.start()
            self.set_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.data)


class OwnObjectStore(OwnService):
    """A MinIO of a test's own holding `bucket`, with the stack's pipeline key and bucket policy.

    Spark reaches it through S3A's per-bucket setting (`spark_conf()`): this bucket's endpoint
    is this MinIO, every other bucket stays on the stack's."""

    kind = "minio"

    def __init__(self, stack: StackSettings, bucket: str) -> None:
        super().__init__(stack, bucket)
        self.bucket = bucket
        self.port, self.console_port = free_loopback_port(), free_loopback_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._root = (f"root{secrets.token_hex(4)}", secrets.token_urlsafe(24))

    @property
    def settings(self) -> StackSettings:
        """The stack's settings with this MinIO as the object store (for stack.init.init_minio)."""
        return dataclasses.replace(self.stack, minio_port=self.port, minio_console_port=self.console_port,
                                   minio_root_user=self._root[0], minio_root_password=self._root[1],
                                   s3_endpoint=self.endpoint, bucket=self.bucket)

    def spark_conf(self) -> dict[str, str]:
        """S3A's per-bucket setting that sends this bucket's calls to this MinIO."""
        return {f"spark.hadoop.fs.s3a.bucket.{self.bucket}.endpoint": self.endpoint}

    def command(self) -> list[str]:
        return [str(self.stack.gobin / "minio"), "server", "--quiet", "--address", f"127.0.0.1:{self.port}",
                "--console-address", f"127.0.0.1:{self.console_port}", str(self.data / "data")]

    def environment(self) -> dict[str, str]:
        return {"MINIO_ROOT_USER": self._root[0], "MINIO_ROOT_PASSWORD": self._root[1]}

    def ready(self) -> bool:
        return http_ok(f"{self.endpoint}/minio/health/ready")

    def set_up(self) -> None:
        from stack.init import init_minio

        init_minio(self.settings)  # the bucket, its policy, the pipeline key (the stack's)


class OwnBroker(OwnService):
    """A Kafka broker of a test's own (KRaft, one node), configured as the stack's: SCRAM on its
    client listener for the stack's users (their passwords), their ACLs, a broker login of its
    own. Clients reach it at `bootstrap` (KAFKA_BOOTSTRAP_SERVERS for a producer or a stream)."""

    kind = "kafka"

    def __init__(self, stack: StackSettings, name: str) -> None:
        super().__init__(stack, name)
        port, internal, controller = free_loopback_port(), free_loopback_port(), free_loopback_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self.settings = dataclasses.replace(
            stack, kafka_port=port, kafka_internal_port=internal, kafka_controller_port=controller,
            kafka_bootstrap=self.bootstrap, kafka_broker_password=secrets.token_urlsafe(24))
        self.properties = self.data / "server.properties"

    def command(self) -> list[str]:
        from stack.install import check_java
        from stack.services import kafka_java_command

        return kafka_java_command(self.settings, check_java(), ["kafka.Kafka", str(self.properties)])

    def prepare(self) -> None:
        from stack.init import format_kafka_storage
        from stack.install import check_java
        from stack.services import kafka_properties, write_private

        write_private(self.properties, kafka_properties(self.settings, log_dir=self.data / "data"))
        if self._user:
            shutil.chown(self.properties, self._user.uid, self._user.gid)
        format_kafka_storage(self.settings, check_java(), self.properties, self.data / "data")

    def ready(self) -> bool:
        from stack.init import kafka_ready

        return kafka_ready(self.settings)

    def set_up(self) -> None:
        from stack.init import init_kafka

        init_kafka(self.settings)  # the stack's SCRAM users, their ACLs, the pipeline topic
