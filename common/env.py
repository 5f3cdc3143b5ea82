"""Environment loading shared by every process of the project.

Configuration comes from the process environment, then from the repository's `.env` file
(created by `make up` from `.env.example`). Nothing here has a default for a secret: a
missing secret is an error that names the variable.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# As root, the download cache (venvs, jars, Go binaries): outside /root, which the stack's
# unprivileged service user cannot enter (stack/service_user.py).
ROOT_CACHE_DIR = Path("/var/cache/iot-lakehouse")


def default_cache_dir() -> Path:
    """Return the download cache when IOT_CACHE_DIR does not name one: ~/.cache/iot-lakehouse
    (or under XDG_CACHE_HOME), and /var/cache/iot-lakehouse as root."""
    if os.geteuid() == 0:
        return ROOT_CACHE_DIR
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iot-lakehouse"

# Variables `make up` (and `make env`) fill with random values on first run. The first ones
# were there before `make up` recorded which secrets a stack was made with (stack/settings.py).
SECRETS_BEFORE_RECORD = (
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
GENERATED_SECRETS = (
    *SECRETS_BEFORE_RECORD,
    "KAFKA_BROKER_PASSWORD",
    "KAFKA_ADMIN_PASSWORD",
    "KAFKA_PRODUCER_PASSWORD",
    "KAFKA_STREAM_PASSWORD",
)
# The secrets each component may hold; every other variable (names, ports, settings) it
# reads as usual. A pipeline job (a Spark driver) writes as the pipeline's PostgreSQL role and
# S3 key and reads Kafka as the stream; Airflow's own task logic also administers the topic
# (retention); the producer only writes Kafka.
SCOPED_SECRETS = {
    "jobs": ("PIPELINE_DB_PASSWORD", "S3_SECRET_KEY", "KAFKA_STREAM_PASSWORD"),
    "airflow": ("PIPELINE_DB_PASSWORD", "S3_SECRET_KEY", "KAFKA_STREAM_PASSWORD", "KAFKA_ADMIN_PASSWORD"),
    "producer": ("KAFKA_PRODUCER_PASSWORD",),
    "superset": ("BI_DB_PASSWORD", "SUPERSET_ADMIN_PASSWORD", "SUPERSET_SECRET_KEY"),
}


def scoped(values: Mapping[str, str], scope: str) -> dict[str, str]:
    """Return `values` without the generated secrets that `scope` (SCOPED_SECRETS) may not hold."""
    allowed = SCOPED_SECRETS[scope]
    return {k: v for k, v in values.items() if k not in GENERATED_SECRETS or k in allowed}


class MissingSetting(RuntimeError):
    """A required configuration variable is not set."""

    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        message = f"{name} is not set: put it in the environment or in .env (see .env.example)"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the variable and where it is set."""


def env_file_entries(path: Path) -> dict[str, tuple[str, int]]:
    """Return {KEY: (value, line number)} of a dotenv file (comments and blank lines skipped);
    raise ConfigError naming the file and line of a malformed one."""
    entries: dict[str, tuple[str, int]] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{path}:{lineno}: expected KEY=value, got {raw!r}")
        value = value.strip()
        if value[:1] in {"'", '"'}:
            try:
                parts = shlex.split(value)
            except ValueError as exc:  # "No closing quotation"
                raise ConfigError(f"{path}:{lineno}: {key}: {str(exc).lower()} (an unterminated quote?)") from None
            value = parts[0] if parts else ""
        entries[key] = (value, lineno)
    return entries


def parse_env_file(path: Path) -> dict[str, str]:
    """Return the KEY=value pairs of a dotenv file (comments and blank lines skipped)."""
    return {key: value for key, (value, _) in env_file_entries(path).items()}


def load_environment(env_file: Path | None = None) -> dict[str, str]:
    """Return `.env` overlaid with the process environment (the environment wins)."""
    return _load(env_file)[0]


def _load(env_file: Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Return (values, where each is set) of `.env` overlaid with the process environment."""
    path = env_file or Path(os.environ.get("IOT_ENV_FILE", REPO_ROOT / ".env"))
    entries = env_file_entries(path) if path.is_file() else {}
    merged = {key: value for key, (value, _) in entries.items()}
    origins = {key: f"{path}:{lineno}" for key, (_, lineno) in entries.items()}
    for key, value in os.environ.items():
        if merged.get(key) != value:
            origins[key] = "the environment"
        merged[key] = value
    return merged, origins


class Env:
    """Typed accessors over a mapping of configuration variables."""

    def __init__(self, values: Mapping[str, str] | None = None, origins: Mapping[str, str] | None = None) -> None:
        if values is None:
            values, origins = _load()
        self._values = dict(values)
        self._origins = dict(origins or {})

    @classmethod
    def from_file(cls, env_file: Path) -> Env:
        """Return `env_file` overlaid with the process environment (the environment wins),
        whatever IOT_ENV_FILE says."""
        return cls(*_load(env_file))

    def where(self, name: str) -> str:
        """Return where `name` is set, for error messages (".env:12", "the environment")."""
        return self._origins.get(name, "the environment")

    def _bad(self, name: str, what: str, raw: str) -> ConfigError:
        return ConfigError(f"{name} must be {what}, got {raw!r} (set in {self.where(name)})")

    def get(self, name: str, default: str) -> str:
        """Return the variable, or `default` when it is unset or empty."""
        value = self._values.get(name, "")
        return value if value != "" else default

    def require(self, name: str, hint: str = "") -> str:
        """Return the variable; raise MissingSetting naming it when unset or empty."""
        value = self._values.get(name, "")
        if value == "":
            raise MissingSetting(name, hint)
        return value

    def get_int(self, name: str, default: int) -> int:
        """Return the variable as an int; a non-integer value is an error naming it."""
        raw = self.get(name, str(default))
        try:
            return int(raw)
        except ValueError:
            raise self._bad(name, "an integer", raw) from None

    def get_port(self, name: str, default: int) -> int:
        """Return the variable as a TCP port (1-65535); anything else is an error naming it."""
        raw = self.get(name, str(default))
        try:
            port = int(raw)
        except ValueError:
            raise self._bad(name, "a port number (1-65535)", raw) from None
        if not 1 <= port <= 65535:
            raise self._bad(name, "a port number (1-65535)", raw)
        return port

    def get_float(self, name: str, default: float) -> float:
        """Return the variable as a finite float; anything else is an error naming it."""
        raw = self.get(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise self._bad(name, "a number", raw) from None
        if not math.isfinite(value):
            raise self._bad(name, "a finite number", raw)
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        """Return the variable as a bool (true/false/1/0/yes/no)."""
        raw = self.get(name, "true" if default else "false").lower()
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise self._bad(name, "true or false", raw)

    def as_dict(self) -> dict[str, str]:
        """Return a copy of every variable."""
        return dict(self._values)
