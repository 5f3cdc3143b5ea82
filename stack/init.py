"""One-time and idempotent initialisation of the stack's services."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.pipeline import DEFAULT_SCHEMA
from common.postgres import connection
from stack.service_user import existing
from stack.services import kafka_java_command, new_kafka_cluster_id, write_state_file
from stack.settings import StackSettings

log = logging.getLogger(__name__)


# ---- PostgreSQL ----------------------------------------------------------------------------

def run_as_service(s: StackSettings, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run `cmd` as the service user when root (stack/service_user.py), else as is."""
    if not s.service_user:
        return subprocess.run(cmd, **kwargs)
    # its own home, not root's (which it cannot enter)
    return existing(s.service_user).run(cmd, home=s.state, **kwargs)


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def init_postgres_cluster(s: StackSettings, bindir: Path) -> bool:
    """Create the data directory with initdb once; return True if it ran."""
    data = s.pg_data
    if (data / "PG_VERSION").exists():
        return False
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # as root, /var/lib/iot-lakehouse/<id> is root's, 0711 (stack/deploy.py): `postgres`
        # passes through it to its own folder
        shutil.chown(data, "postgres", "postgres")
    data.chmod(0o700)
    # the superuser's password in a file of its own (mode 600, in the folder above the data,
    # root's as root) for the moment initdb reads it, never on a command line
    with tempfile.NamedTemporaryFile("w", delete=False, dir=data.parent, prefix="pw") as fh:
        fh.write(s.pg_superuser_password + "\n")
    pwfile = Path(fh.name)
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", s.pg_superuser,
                          "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                          f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8"]),
            check=True, capture_output=True, text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from None
    finally:
        pwfile.unlink()
    return True


def _connection(s: StackSettings, dbname: str = "postgres", autocommit: bool = False):
    """The superuser's connection for one step of the setup (committed and closed after it)."""
    return connection(s.pg_params("superuser", dbname), "iot-stack-init", timeout_seconds=3, autocommit=autocommit)


def pg_ready(s: StackSettings) -> bool:
    """Return whether the superuser can connect and run a query."""
    with _connection(s) as conn, conn.cursor() as cur:
        cur.execute("select 1")
        return cur.fetchone() == (1,)


def _ensure_role(cur, name: str, password: str) -> None:
    from psycopg2 import sql

    cur.execute("select 1 from pg_roles where rolname = %s", (name,))
    verb = "alter" if cur.fetchone() else "create"
    cur.execute(sql.SQL(verb + " role {} with login password {}").format(
        sql.Identifier(name), sql.Literal(password)))


def _ensure_database(cur, name: str, owner: str) -> None:
    from psycopg2 import sql

    cur.execute("select 1 from pg_database where datname = %s", (name,))
    if not cur.fetchone():
        cur.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name),
                                                                 sql.Identifier(owner)))


def init_postgres(s: StackSettings) -> list[str]:
    """Create roles and databases, then apply sql/*.sql in order; return the files applied."""
    # CREATE DATABASE cannot run in a transaction
    with _connection(s, autocommit=True) as conn, conn.cursor() as cur:
        _ensure_role(cur, s.pg_writer, s.pg_writer_password)
        _ensure_role(cur, s.pg_bi, s.pg_bi_password)
        _ensure_role(cur, s.airflow_db_user, s.airflow_db_password)
        _ensure_database(cur, s.pg_db, s.pg_writer)
        _ensure_database(cur, s.airflow_db, s.airflow_db_user)
        _restrict_databases(cur, s)
    return apply_sql(s)


def _restrict_databases(cur, s: StackSettings) -> None:
    """No database is open to PUBLIC: each role connects only where it works. The BI role may
    connect to the pipeline's database and create nothing there, not even a temporary table,
    so its read-only mode rests on privileges, not on a default it could switch off. The
    writer keeps TEMP (the stream's staging table); owners keep their own rights."""
    from psycopg2 import sql

    for db in (s.pg_db, s.airflow_db, "postgres"):
        cur.execute(sql.SQL("revoke connect, temporary on database {} from public").format(sql.Identifier(db)))
    cur.execute(sql.SQL("grant connect, temporary on database {} to {}").format(
        sql.Identifier(s.pg_db), sql.Identifier(s.pg_writer)))
    cur.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(s.pg_db),
                                                                      sql.Identifier(s.pg_bi)))


PIPELINE_TABLES_SQL = ("002_pipeline_tables.sql", "003_batch_tables.sql")
MARTS_SQL = "004_marts.sql"


def apply_sql(s: StackSettings, files: list[Path] | None = None, pipeline_schema: str = DEFAULT_SCHEMA,
              marts_schema: str = "marts") -> list[str]:
    """Apply sql/NNN_*.sql (or `files`) in order with psql; each file is idempotent."""
    psql = shutil.which("psql")
    if not psql:
        raise RuntimeError("`psql` not found: install Debian's postgresql-client")
    files = files if files is not None else sorted((s.repo / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    env = {**os.environ, "PGPASSWORD": s.pg_superuser_password, "PGCONNECT_TIMEOUT": "5"}
    for path in files:
        result = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", s.pg_host, "-p", str(s.pg_port),
             "-U", s.pg_superuser, "-d", s.pg_db,
             "-v", f"writer_role={s.pg_writer}", "-v", f"bi_role={s.pg_bi}",
             "-v", f"pipeline_schema={pipeline_schema}", "-v", f"marts_schema={marts_schema}",
             "-f", str(path)],
            env=env, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"applying {path.name} failed:\n{result.stderr}")
    return [p.name for p in files]


# ---- Kafka ---------------------------------------------------------------------------------

def format_kafka_storage(s: StackSettings, java: str, properties: Path | None = None,
                         data: Path | None = None) -> bool:
    """Format KRaft storage once (`kafka.tools.StorageTool format --standalone`): the stack's,
    or the broker's of `properties` whose log.dirs is `data`."""
    data = data or s.state / "kafka" / "data"
    if (data / "meta.properties").exists():
        return False
    cmd = kafka_java_command(s, java, [
        "kafka.tools.StorageTool", "format", "--standalone", "-t", new_kafka_cluster_id(),
        "-c", str(properties or s.run_dir / "kafka-server.properties")])
    result = run_as_service(s, cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}")
    return True


def kafka_ready(s: StackSettings) -> bool:
    """Return whether the broker answers a metadata request on its internal listener, within
    about 3 s: one probe is one try, the caller's wait_for polls (kafka-python's client would
    otherwise keep trying to bootstrap for 30 s, waiting longer after each refusal)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**s.kafka_broker_kwargs(), request_timeout_ms=3000, bootstrap_timeout_ms=3000,
                             client_id="stack-probe")
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()


def init_kafka(s: StackSettings) -> bool:
    """Create (or update the passwords of) the SCRAM users, their ACLs, and the pipeline topic;
    return True if the topic was created (stack/kafka_admin.py)."""
    from stack.kafka_admin import ensure

    return ensure(s.kafka_setup())


# ---- MinIO ---------------------------------------------------------------------------------

def bucket_policy(bucket: str) -> dict:
    """Return the pipeline key's IAM policy: everything on `bucket`, nothing else."""
    template = json.loads((Path(__file__).resolve().parent.parent / "minio" /
                           "pipeline-policy.json").read_text())
    return json.loads(json.dumps(template).replace("${BUCKET}", bucket))


def mc_root_env(s: StackSettings, config_dir: Path) -> dict[str, str]:
    """Return an environment in which mc's alias `lakehouse` is the stack's MinIO as root: the
    login goes through the environment, never on mc's command line."""
    return {**os.environ,
            "MC_HOST_lakehouse": f"http://{s.minio_root_user}:{s.minio_root_password}@127.0.0.1:{s.minio_port}",
            "MC_CONFIG_DIR": str(config_dir)}


def _mc(s: StackSettings, *args: str, stdin: str | None = None) -> dict | list:
    """Run mc --json against the stack's MinIO as root; secrets go through the environment
    (the alias) and `stdin`, never on its command line."""
    env = mc_root_env(s, s.run_dir / "mc")
    result = subprocess.run([str(s.gobin / "mc"), "--json", *args], env=env, input=stdin or "",
                            capture_output=True, text=True)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0:
        raise RuntimeError(f"mc {' '.join(args[:3])} failed: {result.stdout}{result.stderr}")
    return lines[0] if len(lines) == 1 else lines


def init_minio(s: StackSettings) -> None:
    """Create the bucket, the bucket-scoped policy and the pipeline key (idempotent)."""
    _mc(s, "mb", "--ignore-existing", f"lakehouse/{s.bucket}")
    policy_name = f"{s.bucket}-readwrite"
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=s.run_dir, delete=False) as fh:
        json.dump(bucket_policy(s.bucket), fh)
    try:
        _mc(s, "admin", "policy", "create", "lakehouse", policy_name, fh.name)
    finally:
        os.unlink(fh.name)
    _mc(s, "admin", "user", "add", "lakehouse", s.s3_access_key, stdin=s.s3_secret_key + "\n")
    info = _mc(s, "admin", "user", "info", "lakehouse", s.s3_access_key)
    attached = info.get("policyName", "") if isinstance(info, dict) else ""
    if policy_name not in attached.split(","):
        _mc(s, "admin", "policy", "attach", "lakehouse", policy_name, "--user", s.s3_access_key)


# ---- Airflow -------------------------------------------------------------------------------

def migrate_airflow(s: StackSettings) -> None:
    """Run `airflow db migrate` (idempotent) with the components' environment."""
    from stack.services import airflow_env

    result = run_as_service(s, [str(s.venv / "bin" / "airflow"), "db", "migrate"],
                            env={**os.environ, **airflow_env(s)}, capture_output=True, text=True, cwd=s.app)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


# ---- Superset ------------------------------------------------------------------------------

def _superset(s: StackSettings, *args: str) -> subprocess.CompletedProcess:
    from stack.services import superset_env

    result = run_as_service(s, [str(s.superset_venv / "bin" / "superset"), *args],
                            env={**os.environ, **superset_env(s)}, capture_output=True, text=True, cwd=s.app)
    if result.returncode != 0:
        raise RuntimeError(f"superset {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def init_superset(s: StackSettings) -> bool:
    """Migrate Superset's metadata database, sync its roles, create (or reset) its admin.

    Runs when the lock file or the admin's login changed since the last time (a stamp in
    SUPERSET_HOME), about 2 minutes; return True if it ran.
    """
    import hashlib

    from stack.services import superset_env

    lock = (s.repo / "stack" / "superset" / "requirements.lock").read_bytes()
    digest = hashlib.sha256(lock + f"\0{s.superset_admin_user}\0{s.superset_admin_password}".encode()).hexdigest()
    stamp = s.superset_home / ".initialised"
    if stamp.exists() and stamp.read_text() == digest:
        return False
    log.info("initialising Superset: db upgrade, roles, admin (about 2 minutes the first time)")
    _superset(s, "db", "upgrade")
    _superset(s, "init")
    # the admin's password through the environment, never on a command line
    result = run_as_service(s, [str(s.superset_venv / "bin" / "python"), "-m", "dashboards.superset_admin"],
                            env={**os.environ, **superset_env(s), "SUPERSET_ADMIN_USER": s.superset_admin_user,
                                 "SUPERSET_ADMIN_PASSWORD": s.superset_admin_password},
                            capture_output=True, text=True, cwd=s.app)
    if result.returncode != 0:
        raise RuntimeError(f"creating Superset's admin failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    write_state_file(s, stamp, digest)
    return True


def provision_superset(s: StackSettings) -> str:
    """Provision the dashboard from dashboards/spec.yaml (idempotent); return its URL line."""
    from stack.services import superset_env

    result = run_as_service(
        s, [str(s.superset_venv / "bin" / "python"), "-m", "dashboards.superset",
            "--url", f"http://127.0.0.1:{s.superset_port}", "--wait", "60"],
        env={**os.environ, **superset_env(s)}, capture_output=True, text=True, cwd=s.app)
    if result.returncode != 0:
        raise RuntimeError(f"provisioning Superset failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()
