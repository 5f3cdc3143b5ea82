"""The local stack's services: their configuration files and supervisord programs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import stat
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.env import SCOPED_SECRETS, Env, parse_env_file, scoped
from jobs.spark_conf import lakehouse_spark_conf, render_spark_defaults
from stack.kafka_admin import BROKER_USER as KAFKA_BROKER_USER
from stack.settings import StackSettings


@dataclass(frozen=True)
class Service:
    """One supervised process: its program name, port and how people reach it."""

    name: str
    port: int
    url: str = ""


def services(s: StackSettings) -> list[Service]:
    """Return every service of the stack in start order."""
    return [
        Service("postgres", s.pg_port, f"postgresql://{s.pg_host}:{s.pg_port}/{s.pg_db}"),
        Service("kafka", s.kafka_port, f"{s.kafka_bootstrap} (topic {s.kafka_topic})"),
        Service("minio", s.minio_port, f"S3 API {s.s3_endpoint}"),
        Service("minio-console", s.minio_console_port, f"http://127.0.0.1:{s.minio_console_port}"),
        Service("airflow-api-server", s.airflow_port, f"http://127.0.0.1:{s.airflow_port}"),
        Service("airflow-scheduler", 0),
        Service("airflow-dag-processor", 0),
        Service("airflow-triggerer", 0),
        Service("producer", 0, f"{s.producer_rate:g} events/s to {s.kafka_topic}"),
        Service("superset", s.superset_port, superset_dashboard_url(s)),
    ]


INFRA_PROGRAMS = ("postgres", "kafka", "minio")
AIRFLOW_PROGRAMS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
PIPELINE_PROGRAMS = ("producer",)
DASHBOARD_PROGRAMS = ("superset",)


def superset_dashboard_url(s: StackSettings) -> str:
    """Return the URL of the provisioned dashboard."""
    from dashboards.spec import DASHBOARD_KEY  # the slug dashboards/superset.py gives the dashboard

    return f"http://127.0.0.1:{s.superset_port}/superset/dashboard/{DASHBOARD_KEY}/"


def _quote_env(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (generated files hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)


def make_private_tree(root: Path, traversable: tuple[Path, ...] = ()) -> int:
    """Take group and other permissions off everything under `root` (folders 0700, files keep
    only their owner's bits; the folders in `traversable` 0711: others may pass through, not
    list); return how many entries were changed. A stack made before its files were private
    is fixed by the next `make up`."""
    changed = 0
    if not root.exists():
        return changed
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / d for d in dirs), *(Path(folder) / f for f in files)]:
            try:
                st = path.lstat()
            except FileNotFoundError:  # a service removed it meanwhile
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                wanted = 0o711 if path in traversable else 0o700
            else:
                wanted = stat.S_IMODE(st.st_mode) & 0o700
            if stat.S_IMODE(st.st_mode) != wanted:
                path.chmod(wanted)
                changed += 1
    return changed


def make_home_private(s: StackSettings, folders: tuple[Path, ...] = ()) -> int:
    """Make `folders` (0700) and make_private_tree of the stack's home; return how many
    entries were changed. As root, PostgreSQL runs as `postgres`: a cluster made inside the
    home before it was private (StackSettings.pg_data) keeps a way through to its data
    directory; and the services' state folder, which the service user owns, is walked by a
    child running as that user (stack/service_user.py: root never writes where it owns)."""
    if s.service_user:
        from stack.service_user import existing, prepare_state

        changed = prepare_state(existing(s.service_user), s.app, s.state, list(folders))
        legacy_pg = s.pg_data.is_relative_to(s.home)
        changed += make_private_tree(s.home, traversable=(s.home, s.home / "postgres") if legacy_pg else ())
        return changed + make_private_tree(s.log_dir)
    for folder in folders:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return make_private_tree(s.home)


def sweep_scratch(s: StackSettings) -> int:
    """Remove what Spark drivers that are gone left in the scratch folders (jobs/scratch.py);
    return how many entries. The services' folder, as root, by a child running as their user."""
    from jobs.scratch import sweep

    removed = len(sweep(s.scratch_dirs["stackctl"]))
    services = s.scratch_dirs["services"]
    if services == s.scratch_dirs["stackctl"]:
        return removed
    if not s.service_user:
        return removed + len(sweep(services))
    from stack.service_user import existing

    result = existing(s.service_user).run(
        [sys.executable, "-m", "jobs.scratch", str(services)], home=s.state,
        env={**os.environ, "PYTHONPATH": str(s.app)}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"sweeping {services} as {s.service_user} failed: {result.stderr[-2000:]}")
    return removed + int(result.stdout.split()[1])


# ---- Kafka ---------------------------------------------------------------------------------

def kafka_properties(s: StackSettings, log_dir: Path | None = None) -> str:
    """Return server.properties for one combined KRaft broker+controller on loopback, with
    authentication on every listener and ACLs (StandardAuthorizer, deny when no ACL matches).

    - CLIENT (KAFKA_PORT): SASL/SCRAM-SHA-512, the producer, the stream, the admin. SCRAM
      users live in the cluster's metadata; `make up` creates them (stack/init.py).
    - INTERNAL (KAFKA_INTERNAL_PORT): SASL/PLAIN with a static user, the broker itself: it
      needs no metadata to log in, so `make up` can create the SCRAM users through it, even
      on a cluster formatted before authentication existed.
    - CONTROLLER (KAFKA_CONTROLLER_PORT): SASL/PLAIN, the same static user (KRaft controllers
      cannot take SCRAM: its credentials are in the metadata they serve).
    The file holds the broker's password: it is written mode 600 (write_private). The data
    lives in `log_dir` (default: the stack's state folder's kafka/data)."""
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'username="{KAFKA_BROKER_USER}" password="{s.kafka_broker_password}" '
             f'user_{KAFKA_BROKER_USER}="{s.kafka_broker_password}";')
    admin_user = s.kafka_users["admin"][0]
    return f"""# Generated by `make up`.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{s.kafka_controller_port}
listeners=CLIENT://127.0.0.1:{s.kafka_port},INTERNAL://127.0.0.1:{s.kafka_internal_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}
advertised.listeners=CLIENT://127.0.0.1:{s.kafka_port},INTERNAL://127.0.0.1:{s.kafka_internal_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.internal.sasl.enabled.mechanisms=PLAIN
listener.name.internal.plain.sasl.jaas.config={plain}
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain}
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.mechanism.controller.protocol=PLAIN
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{KAFKA_BROKER_USER};User:{admin_user}
allow.everyone.if.no.acl.found=false
log.dirs={log_dir or s.state / "kafka" / "data"}
num.partitions=1
# Topics are created on purpose (by `make up` and by tests), never by a typo.
auto.create.topics.enable=false
# One node: replication factor 1 for the internal topics.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours={s.kafka_retention_hours}
"""


SPARK_LOG4J2 = """# Generated by `make up`: Spark's own INFO chatter off; the jobs log through Python.
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.delta.name = io.delta
logger.delta.level = warn
logger.kafka.name = org.apache.kafka
logger.kafka.level = warn
logger.spark.name = org.apache.spark
logger.spark.level = warn
# "Current batch is falling behind": one line per slow batch, which the stream's own summary
# (and stream_health) already report
logger.trigger.name = org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor
logger.trigger.level = error
"""

KAFKA_LOG4J2 = """# Generated by `make up`. The broker logs nothing without a log4j2 backend and config.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
"""


def new_kafka_cluster_id() -> str:
    """Return a new KRaft cluster id (22 url-safe base64 chars of a UUID). Storage is formatted
    with it once; the broker reads it from its data folder's meta.properties after that."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def kafka_java_command(s: StackSettings, java: str, main: list[str]) -> list[str]:
    """Return the java command line running `main` with the broker's jars."""
    return [
        java, *s.kafka_heap_opts.split(), "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={s.run_dir / 'kafka-log4j2.properties'}",
        "-cp", str(s.jars_dir / "kafka" / "*"), *main,
    ]


# ---- Airflow -------------------------------------------------------------------------------

def path_with(*first: Path) -> str:
    """Return PATH with `first` in front, once: the same whoever runs `make up` (stackctl puts the
    venv in front of its children's PATH already), so a second `make up` renders the same
    files and restarts nothing."""
    front = [str(f) for f in first]
    # nor the stack's spark-submit folder, which only Airflow's and the jobs' PATH has, where
    # `first` names it: a `make up` from their environment (the tests') must render the same
    entries = [e for e in os.environ.get("PATH", "/usr/bin:/bin").split(":")
               if e and e not in front and Path(e).parts[-3:] != ("stack", "bin", "spark")]
    if os.geteuid() == 0:  # the service user cannot enter root's home: no use searching it
        entries = [e for e in entries if not Path(e).is_relative_to(Path.home())]
    return ":".join([*front, *dict.fromkeys(entries)])


def scoped_env_file(s: StackSettings, scope: str) -> Path:
    """Return the env file of a component: .env's variables less the secrets it may not hold."""
    return s.run_dir / f"{scope}-config.env"  # not <scope>.env: supervisord's program env files


def write_scoped_env_files(s: StackSettings, env: Env) -> None:
    """Write one env file per SCOPED_SECRETS scope (mode 600): what a component reads as its
    IOT_ENV_FILE instead of .env, which holds the PostgreSQL superuser and MinIO root passwords."""
    env_file = s.repo / ".env"
    names = set(parse_env_file(s.repo / ".env.example"))
    if env_file.is_file():
        names |= set(parse_env_file(env_file))
    values = {k: v for k, v in env.as_dict().items() if k in names}
    # the cache as resolved, not as given: a `make up` run from a process that has the services'
    # environment (IOT_CACHE_DIR set, as base_env sets it) then renders the same files, and
    # restarts nothing
    values["IOT_CACHE_DIR"] = str(s.cache_dir)
    values["SPARK_SCRATCH_DIR"] = str(s.scratch_dirs["services"])  # not stackctl's, which differs as root
    for scope in SCOPED_SECRETS:
        write_private(scoped_env_file(s, scope), _quote_env(scoped(values, scope)))


def base_env(s: StackSettings) -> dict[str, str]:
    """Return what every process of the stack needs: the venv, the repo, the pipeline jobs'
    env file (no secret but the pipeline's own), Spark's config."""
    return {
        # the stack's spark-submit first, then the venv's (stack/bin/spark/spark-submit)
        "PATH": path_with(s.app / "stack" / "bin" / "spark", s.venv / "bin"),
        "PYTHONPATH": str(s.app),
        "IOT_ENV_FILE": str(scoped_env_file(s, "jobs")),
        # where the Spark jobs find their jars, whoever they run as (common/env.py)
        "IOT_CACHE_DIR": str(s.cache_dir),
        "SPARK_CONF_DIR": str(s.spark_conf_dir),
        # the drivers' class data sharing archive (stack/bin/spark/spark-submit, stack/class_archive.py)
        "SPARK_CLASS_ARCHIVE": str(s.spark_class_archive),
        "PYSPARK_PYTHON": str(s.venv / "bin" / "python"),
        # Spark's web UI binds to SPARK_LOCAL_IP, else to every interface.
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        # the stack's spark-submit (first on PATH) keeps each driver's temporary files in a
        # folder of its own under SPARK_SCRATCH_DIR, not /tmp (jobs/scratch.py)
        "SPARK_SCRATCH_DIR": str(s.scratch_dirs["services"]),
    }


def airflow_env(s: StackSettings) -> dict[str, str]:
    """Return the environment of every Airflow component (and of `airflow` CLI calls)."""
    pg = f"{s.pg_host}:{s.pg_port}"
    base_url = f"http://127.0.0.1:{s.airflow_port}"
    return {
        **base_env(s),
        # Airflow's task logic (retention administers the topic) and the Spark jobs it starts
        # (orchestration/operators.py hands them IOT_JOB_ENV_FILE) read env files of their own
        "IOT_ENV_FILE": str(scoped_env_file(s, "airflow")),
        "IOT_JOB_ENV_FILE": str(scoped_env_file(s, "jobs")),
        "AIRFLOW_HOME": str(s.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(s.app / "dags"),
        # airflow.cfg, written on the first start, holds absolute paths: the environment wins,
        # so a home that moved (stack/deploy.py) keeps working
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(s.airflow_home / "plugins"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(s.airflow_home / "logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(s.airflow_home / "logs" / "dag_processor"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 32 idle workers cost ~1.1 GB; 4 suits 2 cores (VERSIONS.md).
        "AIRFLOW__CORE__PARALLELISM": str(s.airflow_parallelism),
        "AIRFLOW__CORE__DEFAULT_TIMEZONE": "utc",
        "AIRFLOW__CORE__FERNET_KEY": s.airflow_fernet_key,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{s.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(s.airflow_home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://{s.airflow_db_user}:{s.airflow_db_password}@{pg}/{s.airflow_db}"
        ),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(s.airflow_port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": s.airflow_api_secret_key,
        "AIRFLOW__API_AUTH__JWT_SECRET": s.airflow_jwt_secret,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # task logs private to the stack's user (Airflow's defaults are 0o664 and 0o775)
        "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS": "0o600",
        "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS": "0o700",
        # Connections come from the environment, never from code or the metadata DB.
        "AIRFLOW_CONN_SPARK_LAKEHOUSE": json.dumps({"conn_type": "spark", "host": s.spark_master}),
        # Batch jobs (hourly aggregates) on their own master: one core locally, so a batch run
        # never starves the stream of the other one.
        "AIRFLOW_CONN_SPARK_BATCH": json.dumps({"conn_type": "spark", "host": s.spark_batch_master}),
        "AIRFLOW_CONN_IOT_POSTGRES": json.dumps({
            "conn_type": "postgres", "host": s.pg_host, "port": s.pg_port, "schema": s.pg_db,
            "login": s.pg_writer, "password": s.pg_writer_password,
        }),
    }


def pipeline_env(s: StackSettings) -> dict[str, str]:
    """Return the environment of the pipeline's own processes (producer, ad hoc jobs)."""
    return {
        **base_env(s),
        "IOT_ENV_FILE": str(scoped_env_file(s, "producer")),
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap,
        "KAFKA_TOPIC": s.kafka_topic,
    }


# ---- Superset ------------------------------------------------------------------------------

SUPERSET_CONFIG = """# Generated by `make up` (stack/services.py); edits are overwritten.
import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
# Superset's own metadata (users, charts, dashboards). The data it charts is PostgreSQL's
# marts, read as the BI role (a database connection made by dashboards/superset.py).
SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.environ["SUPERSET_HOME"] + "/superset.db"
DATA_DIR = os.environ["SUPERSET_HOME"]
WTF_CSRF_ENABLED = True
# One small gunicorn worker on 2 cores; results are small, so no cache backend is needed.
ROW_LIMIT = 10000
"""


def superset_env(s: StackSettings) -> dict[str, str]:
    """Return the environment of Superset's server, CLI and provisioner (Superset's own venv)."""
    return {
        "PATH": path_with(s.superset_venv / "bin"),
        "PYTHONPATH": str(s.app),
        "IOT_ENV_FILE": str(scoped_env_file(s, "superset")),
        "SUPERSET_CONFIG_PATH": str(s.run_dir / "superset_config.py"),
        "SUPERSET_HOME": str(s.superset_home),
        "SUPERSET_SECRET_KEY": s.superset_secret_key,
        "FLASK_APP": "superset",
    }


# ---- rendering -----------------------------------------------------------------------------

def render_all(s: StackSettings, java: str, pg_bindir: Path) -> None:
    """Write every generated config of the stack under its run folder (mode 600; as root
    0640, root's, readable by the service group: the services read them, never change them)."""
    for d in (s.run_dir, s.log_dir, s.spark_conf_dir):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_home_private(s, (s.state / "kafka" / "data", s.state / "minio" / "data", s.airflow_home,
                          s.superset_home, s.scratch_dirs["services"]))
    write_private(s.run_dir / "kafka-server.properties", kafka_properties(s))
    write_private(s.run_dir / "kafka-log4j2.properties", KAFKA_LOG4J2)
    write_private(s.run_dir / "minio.env", _quote_env({
        "MINIO_ROOT_USER": s.minio_root_user,
        "MINIO_ROOT_PASSWORD": s.minio_root_password,
        "MINIO_BROWSER": "on",
    }))
    config = s.config or Env()
    write_scoped_env_files(s, config)
    write_private(s.run_dir / "airflow.env", _quote_env(airflow_env(s)))
    write_private(s.run_dir / "pipeline.env", _quote_env(pipeline_env(s)))
    write_private(s.run_dir / "superset.env", _quote_env(superset_env(s)))
    write_private(s.run_dir / "superset_config.py", SUPERSET_CONFIG)
    # Airflow's api-server opens it read-write: it lives in AIRFLOW_HOME, written as its owner
    write_state_file(s, s.airflow_home / "passwords.json", json.dumps({s.airflow_admin_user: s.airflow_admin_password}))
    spark_env = Env({**config.as_dict(), "PYSPARK_PYTHON": str(s.venv / "bin" / "python"),
                     "IOT_CACHE_DIR": str(s.cache_dir)})
    write_spark_conf_dir(s.spark_conf_dir, spark_env)
    write_private(s.run_dir / "supervisord.conf", supervisord_conf(s, java, pg_bindir))
    if s.service_user:
        from stack.service_user import existing, share_tree

        share_tree(s.run_dir, existing(s.service_user).gid)


def write_state_file(s: StackSettings, path: Path, text: str) -> None:
    """Write a file (mode 600) into the services' state folder: as root, as the service user,
    who owns that folder (stack/service_user.py)."""
    if not s.service_user:
        write_private(path, text)
        return
    from stack.service_user import existing, write_as

    write_as(existing(s.service_user), path, text)


def write_spark_conf_dir(conf_dir: Path, env: Env) -> None:
    """Write SPARK_CONF_DIR's spark-defaults.conf (no secrets) and log4j2.properties; `make up`
    and the Docker image build (stack/image.py) both use it."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "log4j2.properties").write_text(SPARK_LOG4J2)
    conf = lakehouse_spark_conf(env, include_secrets=False)
    (conf_dir / "spark-defaults.conf").write_text(render_spark_defaults(conf))


def config_digest(folder: Path, names: tuple[str, ...]) -> str:
    """Return a short digest of the named files in `folder` (a missing one counts as empty)."""
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()[:16]


def supervisord_conf(s: StackSettings, java: str, pg_bindir: Path) -> str:
    """Return supervisord.conf: every service a program, none started automatically
    (`make up` starts them in dependency order and probes each)."""
    with_env = s.app / "stack" / "bin" / "with-env"
    as_root = os.geteuid() == 0
    # As root, every program but PostgreSQL runs as the service user, with a home of its own.
    as_service = {"user": s.service_user} if s.service_user else {}
    service_env = (f',HOME="{s.state}",USER="{s.service_user}",LOGNAME="{s.service_user}"'
                   if s.service_user else "")
    programs: dict[str, dict[str, str]] = {
        "postgres": {
            "command": " ".join([
                str(pg_bindir / "postgres"), "-D", str(s.pg_data),
                "-c", "listen_addresses=127.0.0.1", "-c", f"port={s.pg_port}",
                "-c", f"unix_socket_directories={s.pg_data}", "-c", "max_connections=200",
                "-c", "shared_buffers=128MB", "-c", "timezone=UTC", "-c", "log_timezone=UTC",
                "-c", "unix_socket_permissions=0700",
            ]),
            "stopsignal": "INT",  # "fast" shutdown: aborts transactions, consistent on disk
            **({"user": "postgres"} if as_root else {}),
        },
        "kafka": {
            "command": " ".join(shlex.quote(a) for a in kafka_java_command(
                s, java, ["kafka.Kafka", str(s.run_dir / "kafka-server.properties")])),
            "stopwaitsecs": "60",
            **as_service,
        },
        "minio": {
            "command": " ".join([
                str(with_env), str(s.run_dir / "minio.env"), str(s.gobin / "minio"), "server",
                "--quiet", "--address", f"127.0.0.1:{s.minio_port}",
                "--console-address", f"127.0.0.1:{s.minio_console_port}",
                str(s.state / "minio" / "data"),
            ]),
            **as_service,
        },
    }
    # A fresh random fleet id on every start: a restarted producer must not reuse
    # (sensor_id, seq) pairs of its previous life.
    programs["producer"] = {
        "command": f"{with_env} {s.run_dir / 'pipeline.env'} {s.venv / 'bin' / 'python'} -m producer "
                   f"--rate {s.producer_rate:g} --sensors {s.producer_sensors} "
                   f"--bad-rate {s.producer_bad_rate:g} --stats-interval 60",
        "stopsignal": "TERM",
        "stopwaitsecs": "90",
        **as_service,
    }
    programs["superset"] = {
        "command": f"{with_env} {s.run_dir / 'superset.env'} {s.superset_venv / 'bin' / 'gunicorn'} "
                   f"--workers 1 --threads 4 --timeout 120 --bind 127.0.0.1:{s.superset_port} "
                   "--access-logfile - superset.app:create_app()",
        "stopwaitsecs": "20",
        **as_service,
    }
    airflow = f"{with_env} {s.run_dir / 'airflow.env'} {s.venv / 'bin' / 'airflow'}"
    # The scheduler's and triggerer's log servers bind every interface (Airflow hard-codes the
    # host) and nothing needs them: with the LocalExecutor the api-server reads task logs from
    # AIRFLOW_HOME/logs on this machine. So they are off.
    no_log_server = {"airflow-scheduler": " --skip-serve-logs", "airflow-triggerer": " --skip-serve-logs"}
    for prog in AIRFLOW_PROGRAMS:
        programs[prog] = {"command": f"{airflow} {prog.removeprefix('airflow-')}{no_log_server.get(prog, '')}",
                          "stopwaitsecs": "30", **as_service}

    # A program restarts on `make up` when its config files change, not only its command line:
    # supervisord compares program sections, so each carries a digest of the files it reads.
    def scoped(scope: str) -> str:
        return scoped_env_file(s, scope).name

    config_files = {
        "kafka": ("kafka-server.properties", "kafka-log4j2.properties"), "minio": ("minio.env",),
        "producer": ("pipeline.env", scoped("producer")),
        "superset": ("superset.env", scoped("superset"), "superset_config.py"),
        **{prog: ("airflow.env", scoped("airflow"), scoped("jobs")) for prog in AIRFLOW_PROGRAMS},
    }
    for name, files in config_files.items():
        programs[name]["environment"] = f'IOT_CONFIG_DIGEST="{config_digest(s.run_dir, files)}"{service_env}'

    sections = [
        "; Generated by `make up`; edits are overwritten.",
        "[unix_http_server]",
        f"file={s.supervisor_socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={s.log_dir / 'supervisord.log'}",
        f"pidfile={s.run_dir / 'supervisord.pid'}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"directory={s.app}",
        "umask=077",
        *(["user=root"] if as_root else []),
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{s.supervisor_socket}",
        "",
    ]
    for name, opts in programs.items():
        sections += [
            f"[program:{name}]",
            *(f"{k}={v}" for k, v in opts.items()),
            "autostart=false",
            "autorestart=true",
            "umask=077",  # every file a service writes is private to the stack's user
            "startsecs=3",
            # generous: a dependency's outage (e.g. PostgreSQL for Airflow) must not leave a
            # program FATAL; backoff grows 1 s per retry, so 10 retries span about a minute
            "startretries=10",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={s.log_dir / name}.log",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
            "",
        ]
    return "\n".join(sections)
