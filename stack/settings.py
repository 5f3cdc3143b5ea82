"""Settings of the local stack, built once from the environment and `.env`."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from common.env import REPO_ROOT, Env, parse_env_file

ENV_EXAMPLE = REPO_ROOT / ".env.example"
ENV_FILE = REPO_ROOT / ".env"

# Variables `make up` fills with random values on first run. Everything else keeps the
# example's value.
GENERATED_SECRETS = (
    "MINIO_ROOT_PASSWORD",
    "S3_SECRET_KEY",
    "POSTGRES_SUPERUSER_PASSWORD",
    "PIPELINE_DB_PASSWORD",
    "BI_DB_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "METABASE_DB_PASSWORD",
    "METABASE_ADMIN_PASSWORD",
    "SUPERSET_ADMIN_PASSWORD",
    "SUPERSET_SECRET_KEY",
)


def _random_secret(name: str) -> str:
    if name == "AIRFLOW_FERNET_KEY":
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    # hex keeps the value safe in URLs, shell files and JDBC strings alike
    return secrets.token_hex(20)


def ensure_env_file(env_file: Path = ENV_FILE, example: Path = ENV_EXAMPLE) -> list[str]:
    """Create `.env` from `.env.example` with random secrets; fill secrets missing from an
    existing one. Return the names of the variables written."""
    written: list[str] = []
    if not env_file.exists():
        lines = example.read_text(encoding="utf-8").splitlines()
        out = []
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key in GENERATED_SECRETS and value.strip() == "":
                line = f"{key}={_random_secret(key)}"
                written.append(key)
            out.append(line)
        env_file.write_text("\n".join(out) + "\n", encoding="utf-8")
        env_file.chmod(0o600)
        return written
    present = parse_env_file(env_file)
    missing = [k for k in GENERATED_SECRETS if not present.get(k) and not os.environ.get(k)]
    if missing:
        with env_file.open("a", encoding="utf-8") as fh:
            for key in missing:
                fh.write(f"{key}={_random_secret(key)}\n")
                written.append(key)
    return written


def default_cache_dir() -> Path:
    """Return ~/.cache/iot-lakehouse (or under XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iot-lakehouse"


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
    unpause_dags: tuple[str, ...] = ("iot_stream", "iot_aggregates", "iot_retention")

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
    def run_dir(self) -> Path:
        """Return the folder of generated configs, sockets and env files."""
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        """Return the folder of every service's log."""
        return self.home / "logs"

    @property
    def airflow_home(self) -> Path:
        """Return AIRFLOW_HOME."""
        return self.home / "airflow"

    @property
    def superset_venv(self) -> Path:
        """Return Superset's own virtualenv (its pins conflict with Airflow's), keyed by its lock."""
        lock = (self.repo / "stack" / "superset" / "requirements.lock").read_bytes()
        return self.cache_dir / f"superset-venv-{hashlib.sha256(lock).hexdigest()[:12]}"

    @property
    def superset_home(self) -> Path:
        """Return Superset's data folder (its SQLite metadata database)."""
        return self.home / "superset"

    @property
    def spark_conf_dir(self) -> Path:
        """Return the SPARK_CONF_DIR holding the generated spark-defaults.conf."""
        return self.home / "spark" / "conf"

    @property
    def pg_data(self) -> Path:
        """Return PostgreSQL's data directory.

        PostgreSQL refuses to run as root, so as root it runs as the `postgres` user, which
        may not be able to enter a clone under /root: then its data lives under /var/lib.
        """
        if os.geteuid() == 0 and not _world_traversable(self.home):
            digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
            return Path("/var/lib/iot-lakehouse") / digest / "postgres"
        return self.home / "postgres" / "data"

    @property
    def supervisor_socket(self) -> Path:
        """Return supervisord's unix socket (kept short: sun_path holds 107 bytes)."""
        sock = self.run_dir / "supervisor.sock"
        if len(str(sock)) < 100:
            return sock
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/tmp") / f"iot-lakehouse-{digest}.sock"


def _world_traversable(path: Path) -> bool:
    """Return whether every existing ancestor of `path` can be entered by other users."""
    for part in [path, *path.parents]:
        if part.exists() and not (part.stat().st_mode & 0o001):
            return False
    return True


def load_settings(env: Env | None = None) -> StackSettings:
    """Return the stack settings from the environment and `.env`."""
    env = env or Env()
    repo = REPO_ROOT
    cache_dir = Path(env.get("IOT_CACHE_DIR", str(default_cache_dir()))).expanduser()
    home = Path(env.get("STACK_HOME", str(repo / ".stack"))).expanduser().resolve()
    lock = (repo / "requirements.lock").read_bytes()
    venv = cache_dir / f"venv-{hashlib.sha256(lock).hexdigest()[:12]}"
    return StackSettings(
        repo=repo,
        cache_dir=cache_dir,
        home=home,
        venv=Path(os.environ.get("VIRTUAL_ENV", str(venv))),
        kafka_port=env.get_int("KAFKA_PORT", 9092),
        kafka_controller_port=env.get_int("KAFKA_CONTROLLER_PORT", 9093),
        kafka_bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        kafka_topic=env.get("KAFKA_TOPIC", "iot.sensor-readings"),
        kafka_partitions=env.get_int("KAFKA_TOPIC_PARTITIONS", 6),
        kafka_retention_hours=env.get_int("KAFKA_TOPIC_RETENTION_HOURS", 168),
        kafka_heap_opts=env.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx768m"),
        minio_port=env.get_int("MINIO_PORT", 9000),
        minio_console_port=env.get_int("MINIO_CONSOLE_PORT", 9001),
        minio_root_user=env.get("MINIO_ROOT_USER", "lakehouse-admin"),
        minio_root_password=env.require("MINIO_ROOT_PASSWORD", "run `make up` to generate it"),
        s3_endpoint=env.get("S3_ENDPOINT", "http://127.0.0.1:9000"),
        s3_region=env.get("S3_REGION", "us-east-1"),
        bucket=env.get("LAKEHOUSE_BUCKET", "lakehouse"),
        s3_access_key=env.get("S3_ACCESS_KEY", "lakehouse-pipeline"),
        s3_secret_key=env.require("S3_SECRET_KEY", "run `make up` to generate it"),
        pg_host=env.get("POSTGRES_HOST", "127.0.0.1"),
        pg_port=env.get_int("POSTGRES_PORT", 5432),
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
        airflow_port=env.get_int("AIRFLOW_PORT", 8080),
        airflow_parallelism=env.get_int("AIRFLOW_PARALLELISM", 4),
        airflow_admin_user=env.get("AIRFLOW_ADMIN_USER", "admin"),
        airflow_admin_password=env.require("AIRFLOW_ADMIN_PASSWORD", "run `make up` to generate it"),
        airflow_jwt_secret=env.require("AIRFLOW_JWT_SECRET", "run `make up` to generate it"),
        airflow_api_secret_key=env.require("AIRFLOW_API_SECRET_KEY", "run `make up` to generate it"),
        airflow_fernet_key=env.require("AIRFLOW_FERNET_KEY", "run `make up` to generate it"),
        spark_master=env.get("SPARK_MASTER", "local[2]"),
        spark_batch_master=env.get("SPARK_BATCH_MASTER", "local[1]"),
        spark_driver_memory=env.get("SPARK_DRIVER_MEMORY", "1g"),
        producer_rate=env.get_float("PRODUCER_RATE", 50.0),
        producer_sensors=env.get_int("PRODUCER_SENSORS", 50),
        producer_bad_rate=env.get_float("PRODUCER_BAD_RATE", 0.005),
        superset_port=env.get_int("SUPERSET_PORT", 8088),
        superset_admin_user=env.get("SUPERSET_ADMIN_USER", "admin"),
        superset_admin_password=env.require("SUPERSET_ADMIN_PASSWORD", "run `make up` to generate it"),
        superset_secret_key=env.require("SUPERSET_SECRET_KEY", "run `make up` to generate it"),
        unpause_dags=tuple(d.strip() for d in env.get("AIRFLOW_UNPAUSE_DAGS",
                                                      "iot_stream,iot_aggregates,iot_retention").split(",")
                           if d.strip()),
    )


def main() -> int:
    """Create `.env` (or fill its missing secrets) and say what was written.

    `make env` runs this with the system's python3 and no virtualenv (this module needs only
    the standard library): the first step of the Docker quick start.
    """
    written = ensure_env_file()
    if written:
        print(f"{ENV_FILE}: generated {', '.join(written)}")
    else:
        print(f"{ENV_FILE}: complete, nothing to generate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
