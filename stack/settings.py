"""Settings of the local stack, built once from the environment and `.env`."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.env import GENERATED_SECRETS, REPO_ROOT, SECRETS_BEFORE_RECORD, Env, default_cache_dir, parse_env_file
from common.kafka import ROLES, KafkaLogin
from common.pipeline import DEFAULT_BUCKET, DEFAULT_PRODUCER_BAD_RATE, DEFAULT_PRODUCER_RATE, PipelineNames
from stack.kafka_admin import KafkaSetup
from stack.service_user import DEFAULT_SERVICE_USER

ENV_EXAMPLE = REPO_ROOT / ".env.example"
ENV_FILE = REPO_ROOT / ".env"

# Secrets that may be replaced in an existing `.env` without losing anything: a new JWT
# secret only signs new tokens (HS512 wants at least 64 bytes; older stacks had 40).
ROTATABLE_MIN_LENGTH = {"AIRFLOW_JWT_SECRET": 64}
# As root, each stack's services keep their data, code and configs here, one folder per stack
# (stack_id): PostgreSQL's cluster and the service user's state (stack/service_user.py).
PG_ROOT_DATA = Path("/var/lib/iot-lakehouse")
# Where `make up` records which generated secrets the stack's data was initialised with.
SECRETS_IN_USE = "secrets-in-use"


def _random_secret(name: str) -> str:
    if name == "AIRFLOW_FERNET_KEY":
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    # hex keeps the value safe in URLs, shell files and JDBC strings alike
    return secrets.token_hex(max(20, (ROTATABLE_MIN_LENGTH.get(name, 0) + 1) // 2))


class SecretLost(RuntimeError):
    """A secret the stack was initialised with is missing from `.env`; generating a new one
    would lock the stack out of its own data."""


def write_env_atomically(env_file: Path, text: str) -> None:
    """Write `text` to `env_file` through a new file created with mode 600 (never readable by
    others, not even briefly) and renamed over it: a crash leaves the old file or the new."""
    tmp = env_file.with_name(f".{env_file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, env_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(env_file.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stack_home_for(env_file: Path) -> Path:
    """Return the STACK_HOME that goes with `env_file`, as load_settings sees it: the
    environment's, else the file's, else .stack beside the file."""
    configured = os.environ.get("STACK_HOME") or (parse_env_file(env_file).get("STACK_HOME") if env_file.is_file()
                                                   else None)
    return Path(configured or str(env_file.parent / ".stack")).expanduser().resolve()


def stack_id(home: Path) -> str:
    """Return the random id of the stack in `home`, made on first use and kept in the home.

    It names the stack's folder outside its home (PostgreSQL's cluster as root). A folder named
    after the home's path would be found again by a new clone at the same path (CI clones into
    the same folder) and hand it a cluster made with another clone's passwords. A stack made by
    an older version, which named that folder after the path, adopts it."""
    record = home / "stack-id"
    if record.is_file():
        return record.read_text(encoding="utf-8").strip()
    by_path = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    initialised = (home / "run").is_dir()
    value = by_path if initialised and (PG_ROOT_DATA / by_path / "postgres" / "PG_VERSION").exists() \
        else secrets.token_hex(6)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_env_atomically(record, value + "\n")
    return value


def secrets_in_use(home: Path) -> set[str]:
    """Return the generated secrets the stack's data in `home` was initialised with (none for a
    new stack; those of the time for a stack initialised before `make up` kept the record)."""
    record = home / SECRETS_IN_USE
    if record.is_file():
        return {line.strip() for line in record.read_text(encoding="utf-8").splitlines() if line.strip()}
    return set(SECRETS_BEFORE_RECORD) if (home / "run").is_dir() else set()


def record_secrets_in_use(home: Path, names: set[str]) -> None:
    """Add `names` to the stack's record of the secrets its data was initialised with."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_env_atomically(home / SECRETS_IN_USE, "".join(f"{n}\n" for n in sorted(secrets_in_use(home) | names)))


def ensure_env_file(env_file: Path = ENV_FILE, example: Path = ENV_EXAMPLE, home: Path | None = None) -> list[str]:
    """Create `.env` from `.env.example` with random secrets, or add to an existing one the
    generated secrets it lacks; return the names of the variables written. (IOT_ENV_FILE
    plays no part: it names the file a component reads, one of the stack's scoped copies.)

    Refuses (SecretLost) to generate a secret the stack in `home` was initialised with: a new
    PostgreSQL or Superset secret would lock `make up` out of the existing data. The file is
    created and rewritten only through write_env_atomically (mode 600, renamed into place)."""
    written: list[str] = []
    if not env_file.exists():
        out = []
        for line in example.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key in GENERATED_SECRETS and value.strip() == "":
                line = f"{key}={_random_secret(key)}"
                written.append(key)
            out.append(line)
        home = home or stack_home_for(env_file)
        lost = sorted(secrets_in_use(home) & set(written) - {k for k in written if os.environ.get(k)})
        if lost:
            raise SecretLost(_lost_message(env_file, home, lost))
        write_env_atomically(env_file, "\n".join(out) + "\n")
        return written
    present = parse_env_file(env_file)
    missing = [k for k in GENERATED_SECRETS if not present.get(k) and not os.environ.get(k)]
    short = [k for k, n in ROTATABLE_MIN_LENGTH.items() if present.get(k) and len(present[k]) < n
             and not os.environ.get(k)]
    if not missing and not short:
        return written
    home = home or stack_home_for(env_file)
    lost = sorted(set(missing) & secrets_in_use(home))
    if lost:
        raise SecretLost(_lost_message(env_file, home, lost))
    lines = [line for line in env_file.read_text(encoding="utf-8").splitlines()
             if line.partition("=")[0].strip().removeprefix("export ").strip() not in set(missing) | set(short)]
    for key in [*missing, *short]:
        lines.append(f"{key}={_random_secret(key)}")
        written.append(key)
    write_env_atomically(env_file, "\n".join(lines) + "\n")
    return written


def _lost_message(env_file: Path, home: Path, lost: list[str]) -> str:
    return (f"{env_file} lacks {', '.join(lost)}, which the stack in {home} was initialised with. A new value "
            "would lock it out of its own data (PostgreSQL roles, MinIO keys, Superset's encrypted settings), so "
            f"none is generated. Put the old value(s) back into {env_file.name} (from a backup, or from the "
            f"service configs under {home / 'run'}); or, to start over with new secrets and no data, run "
            "`make clean` then `make up`.")


# DAGs `make up` unpauses (AIRFLOW_UNPAUSE_DAGS): the pipeline's scheduled ones, and the manual
# ones, which run only when someone triggers them (a paused DAG's triggered run stays queued)
DEFAULT_UNPAUSE_DAGS = ("iot_stream", "iot_aggregates", "iot_retention", "iot_reprocess", "iot_stream_adhoc")


@dataclass(frozen=True)
class StackSettings:
    """Everything the local stack needs to install, start, probe and initialise services."""

    repo: Path
    cache_dir: Path
    home: Path
    venv: Path
    kafka_port: int
    kafka_controller_port: int
    kafka_bootstrap: str
    kafka_topic: str
    kafka_partitions: int
    kafka_retention_hours: int
    kafka_heap_opts: str
    kafka_internal_port: int
    kafka_adhoc_topic_prefix: str
    kafka_broker_password: str
    kafka_users: dict  # role -> (user, password): producer, stream, admin (common/kafka.py)
    minio_port: int
    minio_console_port: int
    minio_root_user: str
    minio_root_password: str
    s3_endpoint: str
    s3_region: str
    bucket: str
    s3_access_key: str
    s3_secret_key: str
    pg_host: str
    pg_port: int
    pg_superuser: str
    pg_superuser_password: str
    pg_db: str
    pg_writer: str
    pg_writer_password: str
    pg_bi: str
    pg_bi_password: str
    airflow_db: str
    airflow_db_user: str
    airflow_db_password: str
    airflow_port: int
    airflow_parallelism: int
    airflow_admin_user: str
    airflow_admin_password: str
    airflow_jwt_secret: str
    airflow_api_secret_key: str
    airflow_fernet_key: str
    spark_master: str
    spark_batch_master: str
    spark_driver_memory: str
    producer_rate: float
    producer_sensors: int
    producer_bad_rate: float
    superset_port: int
    superset_admin_user: str
    superset_admin_password: str
    superset_secret_key: str
    unpause_dags: tuple[str, ...] = DEFAULT_UNPAUSE_DAGS
    config: Env | None = field(default=None, repr=False, compare=False)  # what it was built from
    # As root, the unprivileged user every service but PostgreSQL runs as; None otherwise
    # (then everything runs as whoever runs `make up`, from the clone and its .stack/).
    service_user: str | None = None

    # ---- Kafka logins ----------------------------------------------------------------
    def kafka_login(self, role: str) -> KafkaLogin:
        """Return the Kafka login of `role` (producer, stream, admin)."""
        user, password = self.kafka_users[role]
        return KafkaLogin(self.kafka_bootstrap, user, password)

    def kafka_setup(self) -> KafkaSetup:
        """Return what `make up` sets up in Kafka, through the broker's internal listener."""
        return KafkaSetup(bootstrap=f"127.0.0.1:{self.kafka_internal_port}", broker_password=self.kafka_broker_password,
                          users=self.kafka_users, topic=self.kafka_topic, partitions=self.kafka_partitions,
                          retention_hours=self.kafka_retention_hours, adhoc_prefix=self.kafka_adhoc_topic_prefix)

    def kafka_broker_kwargs(self) -> dict[str, str | int]:
        """Return kafka-python keywords for the broker's own principal on its internal
        listener (SASL/PLAIN): the super user `make up` creates users and ACLs with."""
        return self.kafka_setup().broker_kwargs()

    # ---- PostgreSQL logins -------------------------------------------------------------
    def pg_params(self, role: str = "writer", dbname: str | None = None) -> dict:
        """Return the psycopg2 connection parameters of `role` (writer, bi, superuser) for
        `dbname` (default: the pipeline's database), for `common.postgres`."""
        user, password = {"writer": (self.pg_writer, self.pg_writer_password),
                          "bi": (self.pg_bi, self.pg_bi_password),
                          "superuser": (self.pg_superuser, self.pg_superuser_password)}[role]
        return {"host": self.pg_host, "port": self.pg_port, "dbname": dbname or self.pg_db,
                "user": user, "password": password}

    # ---- derived paths -------------------------------------------------------------
    @property
    def jars_dir(self) -> Path:
        """Return the cache folder holding the Maven-fetched jars."""
        return self.cache_dir / "jars"

    @property
    def gobin(self) -> Path:
        """Return the cache folder holding the Go-built binaries (minio, mc)."""
        return self.cache_dir / "gobin"

    @property
    def root_dir(self) -> Path:
        """Return the stack's folder under /var/lib/iot-lakehouse (used as root)."""
        return PG_ROOT_DATA / stack_id(self.home)

    @property
    def state(self) -> Path:
        """Return the folder the services write: Kafka's and MinIO's data, Airflow's and
        Superset's homes. STACK_HOME itself, except as root: then a folder the service user
        owns, outside the clone (which may lie under /root, where it cannot go)."""
        return self.root_dir / "home" if self.service_user else self.home

    @property
    def app(self) -> Path:
        """Return the code the services run: the clone, or as root a copy of it that `make up`
        refreshes (root's, readable by the service user, stack/deploy.py)."""
        return self.root_dir / "app" if self.service_user else self.repo

    @property
    def run_dir(self) -> Path:
        """Return the folder of generated configs, sockets and env files (as root: root's, the
        service user may read it)."""
        return self.root_dir / "run" if self.service_user else self.home / "run"

    @property
    def scratch_dirs(self) -> dict[str, Path]:
        """Return SPARK_SCRATCH_DIR (jobs/scratch.py) of the services' Spark drivers ("services")
        and of those you start with stackctl ("stackctl": the tests', ad hoc ones): the same
        folder, except as root, where each user writes only in a folder of its own."""
        return {"services": self.state / "tmp", "stackctl": self.home / "tmp"}

    @property
    def log_dir(self) -> Path:
        """Return the folder of every service's log (supervisord writes them)."""
        return self.root_dir / "logs" if self.service_user else self.home / "logs"

    @property
    def airflow_home(self) -> Path:
        """Return AIRFLOW_HOME."""
        return self.state / "airflow"

    @property
    def superset_venv(self) -> Path:
        """Return Superset's own virtualenv (its pins conflict with Airflow's), keyed by its lock."""
        lock = (self.repo / "stack" / "superset" / "requirements.lock").read_bytes()
        return self.cache_dir / f"superset-venv-{hashlib.sha256(lock).hexdigest()[:12]}"

    @property
    def superset_home(self) -> Path:
        """Return Superset's data folder (its SQLite metadata database)."""
        return self.state / "superset"

    @property
    def spark_conf_dir(self) -> Path:
        """Return the SPARK_CONF_DIR holding the generated spark-defaults.conf."""
        return self.run_dir / "spark-conf" if self.service_user else self.home / "spark" / "conf"

    @property
    def spark_class_archive(self) -> Path:
        """Return the Spark drivers' class data sharing archive (stack/class_archive.py). In the
        cache, like the jars it is made from: a new stack on the same cache (a CI run's) maps
        it without making it again. stack/bin/stackctl names it too."""
        return self.cache_dir / "spark-class-archive" / "driver.jsa"

    @property
    def pg_data(self) -> Path:
        """Return PostgreSQL's data directory.

        PostgreSQL refuses to run as root, so as root it runs as the `postgres` user, which
        cannot enter the stack's home (private to root, 0700): then its data lives under
        /var/lib/iot-lakehouse/<this stack's id>. A cluster made inside a world-traversable home
        before the home was private stays where it is.
        """
        inside = self.home / "postgres" / "data"
        if os.geteuid() == 0 and not (inside / "PG_VERSION").exists():
            return self.root_dir / "postgres"
        return inside

    @property
    def supervisor_socket(self) -> Path:
        """Return supervisord's unix socket (kept short: sun_path holds 107 bytes)."""
        sock = self.run_dir / "supervisor.sock"
        if len(str(sock)) < 100:
            return sock
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/tmp") / f"iot-lakehouse-{digest}.sock"


def load_settings(env: Env | None = None) -> StackSettings:
    """Return the stack settings from the environment and `.env`."""
    env = env or Env()
    repo = REPO_ROOT
    cache_dir = Path(env.get("IOT_CACHE_DIR", str(default_cache_dir()))).expanduser()
    as_root = os.geteuid() == 0
    home = Path(env.get("STACK_HOME", str(repo / ".stack"))).expanduser().resolve()
    lock = (repo / "requirements.lock").read_bytes()
    venv = cache_dir / f"venv-{hashlib.sha256(lock).hexdigest()[:12]}"
    return StackSettings(
        repo=repo,
        cache_dir=cache_dir,
        home=home,
        venv=Path(os.environ.get("VIRTUAL_ENV", str(venv))),
        kafka_port=env.get_port("KAFKA_PORT", 9092),
        kafka_controller_port=env.get_port("KAFKA_CONTROLLER_PORT", 9093),
        kafka_bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        kafka_topic=PipelineNames.from_env(env).topic,
        kafka_partitions=env.get_int("KAFKA_TOPIC_PARTITIONS", 6),
        kafka_retention_hours=env.get_int("KAFKA_TOPIC_RETENTION_HOURS", 168),
        kafka_heap_opts=env.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx768m"),
        kafka_internal_port=env.get_port("KAFKA_INTERNAL_PORT", 9094),
        kafka_adhoc_topic_prefix=env.get("KAFKA_ADHOC_TOPIC_PREFIX", "iot.adhoc."),
        kafka_broker_password=env.require("KAFKA_BROKER_PASSWORD", "run `make up` to generate it"),
        kafka_users={role: (login.user, login.password) for role in ROLES
                     for login in (KafkaLogin.from_env(env, role),)},
        minio_port=env.get_port("MINIO_PORT", 9000),
        minio_console_port=env.get_port("MINIO_CONSOLE_PORT", 9001),
        minio_root_user=env.get("MINIO_ROOT_USER", "lakehouse-admin"),
        minio_root_password=env.require("MINIO_ROOT_PASSWORD", "run `make up` to generate it"),
        s3_endpoint=env.get("S3_ENDPOINT", "http://127.0.0.1:9000"),
        s3_region=env.get("S3_REGION", "us-east-1"),
        bucket=env.get("LAKEHOUSE_BUCKET", DEFAULT_BUCKET),
        s3_access_key=env.get("S3_ACCESS_KEY", "lakehouse-pipeline"),
        s3_secret_key=env.require("S3_SECRET_KEY", "run `make up` to generate it"),
        pg_host=env.get("POSTGRES_HOST", "127.0.0.1"),
        pg_port=env.get_port("POSTGRES_PORT", 5432),
        pg_superuser=env.get("POSTGRES_SUPERUSER", "postgres"),
        pg_superuser_password=env.require("POSTGRES_SUPERUSER_PASSWORD", "run `make up` to generate it"),
        pg_db=env.get("POSTGRES_DB", "iot"),
        pg_writer=env.get("PIPELINE_DB_USER", "iot_writer"),
        pg_writer_password=env.require("PIPELINE_DB_PASSWORD", "run `make up` to generate it"),
        pg_bi=env.get("BI_DB_USER", "iot_bi"),
        pg_bi_password=env.require("BI_DB_PASSWORD", "run `make up` to generate it"),
        airflow_db=env.get("AIRFLOW_DB", "airflow"),
        airflow_db_user=env.get("AIRFLOW_DB_USER", "airflow"),
        airflow_db_password=env.require("AIRFLOW_DB_PASSWORD", "run `make up` to generate it"),
        airflow_port=env.get_port("AIRFLOW_PORT", 8080),
        airflow_parallelism=env.get_int("AIRFLOW_PARALLELISM", 4),
        airflow_admin_user=env.get("AIRFLOW_ADMIN_USER", "admin"),
        airflow_admin_password=env.require("AIRFLOW_ADMIN_PASSWORD", "run `make up` to generate it"),
        airflow_jwt_secret=env.require("AIRFLOW_JWT_SECRET", "run `make up` to generate it"),
        airflow_api_secret_key=env.require("AIRFLOW_API_SECRET_KEY", "run `make up` to generate it"),
        airflow_fernet_key=env.require("AIRFLOW_FERNET_KEY", "run `make up` to generate it"),
        spark_master=env.get("SPARK_MASTER", "local[2]"),
        spark_batch_master=env.get("SPARK_BATCH_MASTER", "local[2]"),
        spark_driver_memory=env.get("SPARK_DRIVER_MEMORY", "1g"),
        producer_rate=env.get_float("PRODUCER_RATE", DEFAULT_PRODUCER_RATE),
        producer_sensors=env.get_int("PRODUCER_SENSORS", 50),
        producer_bad_rate=env.get_float("PRODUCER_BAD_RATE", DEFAULT_PRODUCER_BAD_RATE),
        superset_port=env.get_port("SUPERSET_PORT", 8088),
        superset_admin_user=env.get("SUPERSET_ADMIN_USER", "admin"),
        superset_admin_password=env.require("SUPERSET_ADMIN_PASSWORD", "run `make up` to generate it"),
        superset_secret_key=env.require("SUPERSET_SECRET_KEY", "run `make up` to generate it"),
        config=env,
        service_user=env.get("IOT_SERVICE_USER", DEFAULT_SERVICE_USER) if as_root else None,
        unpause_dags=tuple(d.strip() for d in env.get("AIRFLOW_UNPAUSE_DAGS", ",".join(DEFAULT_UNPAUSE_DAGS)).split(",")
                           if d.strip()),
    )


def main() -> int:
    """Create `.env` (or fill its missing secrets) and say what was written.

    `make env` runs this with the system's python3 and no virtualenv (this module needs only
    the standard library): the first step of the Docker quick start.
    """
    try:
        written = ensure_env_file()
    except SecretLost as exc:
        print(f"make env: {exc}", file=sys.stderr)
        return 2
    if written:
        print(f"{ENV_FILE}: generated {', '.join(written)}")
    else:
        print(f"{ENV_FILE}: complete, nothing to generate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
