"""The local stack's real services, each exercised the way the pipeline uses it.

Every test works on names of its own (topic, bucket prefix, table) and removes them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import psycopg2
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from common.postgres import open_connection
from common.probes import airflow_health, wait_for
from stack.manager import Supervisor, stream_driver_processes
from stack.services import AIRFLOW_PROGRAMS
from tests.integration.airflow_kit import airflow_environment

pytestmark = pytest.mark.integration


# ---- Kafka -----------------------------------------------------------------------------------

@pytest.fixture
def topic(stack, unique_name):
    """Create a 3-partition topic of the test's own; delete it afterwards."""
    name = unique_name("it-topic")
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    yield name
    admin.delete_topics([name])
    admin.close()


def test_kafka_produce_and_consume(stack, topic):
    producer = KafkaProducer(**stack.kafka_login("admin").client_kwargs(), acks="all")
    sent = {f"key-{i}": f"value-{i}" for i in range(20)}
    for key, value in sent.items():
        producer.send(topic, key=key.encode(), value=value.encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(topic, **stack.kafka_login("admin").client_kwargs(),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    received = {}
    for record in consumer:
        received[record.key.decode()] = record.value.decode()
        if len(received) == len(sent):
            break
    consumer.close()
    assert received == sent


def test_pipeline_topic_has_explicit_partitions_and_retention(stack):
    admin = KafkaAdminClient(**stack.kafka_login("admin").client_kwargs())
    try:
        described = admin.describe_topics([stack.kafka_topic])[0]
        assert len(described["partitions"]) == stack.kafka_partitions
        from kafka.admin import ConfigResource, ConfigResourceType

        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, stack.kafka_topic)])
        entries = configs["topic"][stack.kafka_topic]
        assert entries["retention.ms"]["value"] == str(stack.kafka_retention_hours * 3600 * 1000)
        assert entries["cleanup.policy"]["value"] == "delete"
    finally:
        admin.close()


# ---- object store ----------------------------------------------------------------------------

def _s3(stack, access_key, secret_key):
    return boto3.client(
        "s3", endpoint_url=stack.s3_endpoint, region_name=stack.s3_region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def test_object_store_pipeline_key_reads_and_writes_its_bucket(stack, unique_name):
    s3 = _s3(stack, stack.s3_access_key, stack.s3_secret_key)
    prefix = f"tests/{unique_name('s3')}/"
    keys = [f"{prefix}obj-{i}.json" for i in range(3)]
    try:
        for i, key in enumerate(keys):
            s3.put_object(Bucket=stack.bucket, Key=key, Body=json.dumps({"i": i}).encode())
        assert json.loads(s3.get_object(Bucket=stack.bucket, Key=keys[1])["Body"].read()) == {"i": 1}
        listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
        assert sorted(o["Key"] for o in listed["Contents"]) == keys
    finally:
        for key in keys:
            s3.delete_object(Bucket=stack.bucket, Key=key)
    assert s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)["KeyCount"] == 0


def test_object_store_pipeline_key_is_denied_outside_its_bucket(stack, unique_name):
    root = _s3(stack, stack.minio_root_user, stack.minio_root_password)
    other = unique_name("other").replace("_", "-")
    root.create_bucket(Bucket=other)
    try:
        s3 = _s3(stack, stack.s3_access_key, stack.s3_secret_key)
        with pytest.raises(ClientError) as put_err:
            s3.put_object(Bucket=other, Key="x", Body=b"x")
        assert put_err.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as list_err:
            s3.list_objects_v2(Bucket=other)
        assert list_err.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as create_err:
            s3.create_bucket(Bucket=unique_name("nope").replace("_", "-"))
        assert create_err.value.response["Error"]["Code"] == "AccessDenied"
    finally:
        root.delete_bucket(Bucket=other)


def test_object_store_pipeline_key_cannot_mint_keys_for_itself(stack, tmp_path):
    """MinIO lets a user create service accounts (access keys) for itself unless a policy
    denies admin:CreateServiceAccount: a leaked pipeline key could otherwise outlive its rotation."""
    env = {**os.environ, "MC_CONFIG_DIR": str(tmp_path / "mc"),
           "MC_HOST_pipeline": f"http://{stack.s3_access_key}:{stack.s3_secret_key}@127.0.0.1:{stack.minio_port}"}
    result = subprocess.run([str(stack.gobin / "mc"), "--json", "admin", "user", "svcacct", "add", "pipeline",
                             stack.s3_access_key], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode == 0:  # the test fails; the key it minted must not outlive it
        env["MC_HOST_root"] = (f"http://{stack.minio_root_user}:{stack.minio_root_password}"
                               f"@127.0.0.1:{stack.minio_port}")
        minted = json.loads(result.stdout.splitlines()[-1])["accessKey"]
        subprocess.run([str(stack.gobin / "mc"), "admin", "user", "svcacct", "rm", "root", minted], env=env,
                       capture_output=True, timeout=60, check=True)
    assert result.returncode != 0, "the pipeline key minted an access key for itself"
    assert "Access Denied" in result.stdout + result.stderr


# ---- PostgreSQL ------------------------------------------------------------------------------

def _pg(stack, role: str):
    return open_connection(stack.pg_params(role), f"iot-tests-{role}", autocommit=True)


@pytest.fixture
def mart_table(stack, unique_name):
    """A table the writer creates in the marts schema (which the BI role may read)."""
    name = f"marts.{unique_name('it')}"
    writer = _pg(stack, "writer")
    with writer.cursor() as cur:
        cur.execute(f"create table {name} (id int primary key, reading_c numeric)")
    yield name, writer
    with writer.cursor() as cur:
        cur.execute(f"drop table {name}")
    writer.close()


def test_postgres_writer_inserts_and_bi_role_only_reads(stack, mart_table):
    name, writer = mart_table
    with writer.cursor() as cur:
        cur.execute(f"insert into {name} values (1, 21.5), (2, 22.5)")
    bi = _pg(stack, "bi")
    try:
        with bi.cursor() as cur:
            cur.execute(f"select id, reading_c from {name} order by id")
            assert [(r[0], float(r[1])) for r in cur.fetchall()] == [(1, 21.5), (2, 22.5)]
            for statement in (f"insert into {name} values (3, 1)",
                              f"update {name} set reading_c = 0",
                              f"delete from {name}"):
                with pytest.raises(psycopg2.Error) as err:
                    cur.execute(statement)
                # read-only transaction (25006) or permission denied (42501)
                assert err.value.pgcode in {"25006", "42501"}, statement
            # Even with the read-only default switched off, privileges refuse the write.
            cur.execute("set default_transaction_read_only = off")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f"insert into {name} values (3, 1)")
    finally:
        bi.close()
    with writer.cursor() as cur:
        cur.execute(f"select count(*) from {name}")
        assert cur.fetchone() == (2,)


def test_postgres_bi_role_cannot_read_the_pipeline_schema(stack):
    bi = _pg(stack, "bi")
    try:
        with bi.cursor() as cur:
            cur.execute("set default_transaction_read_only = off")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("create table iot.should_not_exist (id int)")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("select * from pg_catalog.pg_class, iot.none_such")
    finally:
        bi.close()


def test_postgres_bi_role_is_read_only_by_privileges_and_confined_to_its_database(stack):
    """Switching the read-only default off (set transaction read write) must not open a write:
    no TEMP, no CREATE anywhere; and no database but the pipeline's lets it in."""
    bi = _pg(stack, "bi")
    try:
        bi.autocommit = False
        for statement in ("create temporary table mine (id int)", "create table public.mine (id int)",
                          "create schema mine", "create table marts.mine (id int)",
                          "create view marts.mine as select 1"):
            with bi.cursor() as cur:
                cur.execute("set transaction read write")
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(statement)
            bi.rollback()
    finally:
        bi.close()
    for database in (stack.airflow_db, "postgres"):
        with pytest.raises(psycopg2.OperationalError, match=f'permission denied for database "{database}"'):
            open_connection(stack.pg_params("bi", database), "iot-tests-bi")


# ---- Spark -----------------------------------------------------------------------------------

def test_spark_submit_reaches_delta_on_s3_kafka_and_jdbc(stack, topic, mart_table, unique_name):
    name, writer = mart_table
    with writer.cursor() as cur:
        cur.execute(f"drop table {name}")  # Spark's JDBC writer creates it
    producer = KafkaProducer(**stack.kafka_login("admin").client_kwargs(), acks="all")
    for i in range(3):
        producer.send(topic, value=f"m{i}".encode())
    producer.flush(timeout=30)
    producer.close()

    prefix = f"tests/{unique_name('spark')}"
    delta_path = f"s3a://{stack.bucket}/{prefix}/delta"
    env = {**os.environ, **airflow_environment(stack)}
    result = subprocess.run(
        [str(stack.venv / "bin" / "spark-submit"), "--master", "local[2]",
         str(stack.repo / "jobs" / "stack_check.py"), "--kafka-role", "admin",
         "--delta-path", delta_path, "--topic", topic, "--jdbc-table", name],
        env=env, capture_output=True, text=True, timeout=300,
    )
    try:
        assert result.returncode == 0, result.stderr[-4000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("STACK_CHECK "))
        seen = json.loads(line.removeprefix("STACK_CHECK "))
        assert seen["delta_ids"] == [1, 2, 3, 4, 5]
        assert seen["kafka_values"] == ["m0", "m1", "m2"]
        assert seen["session_time_zone"] == "UTC"
        assert seen["spark_version"] == "4.2.0"
        with writer.cursor() as cur:
            cur.execute(f"select id, name from {name} order by id")
            assert cur.fetchall() == [(i, f"row-{i}") for i in range(1, 6)]
    finally:
        s3 = _s3(stack, stack.s3_access_key, stack.s3_secret_key)
        listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix + "/")
        for obj in listed.get("Contents", []):
            s3.delete_object(Bucket=stack.bucket, Key=obj["Key"])
        with writer.cursor() as cur:
            cur.execute(f"create table if not exists {name} (id int)")  # the fixture drops it


# ---- Airflow ---------------------------------------------------------------------------------

def test_airflow_dagbag_has_no_import_errors(stack):
    code = (
        "import json; from airflow.dag_processing.dagbag import DagBag; "
        "b = DagBag(); "
        "print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()}, "
        "'dags': sorted(b.dag_ids)}))"
    )
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **airflow_environment(stack)},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    bag = json.loads(result.stdout.strip().splitlines()[-1])
    assert bag["errors"] == {}


def test_airflow_api_reports_components_healthy(stack):
    health = airflow_health(f"http://127.0.0.1:{stack.airflow_port}")
    assert health["metadatabase"] == "healthy"
    assert health["scheduler"] == "healthy"
    assert health["dag_processor"] == "healthy"
    assert health["triggerer"] == "healthy"


def test_airflow_admin_login_from_env_gets_a_token(stack):
    body = json.dumps({"username": stack.airflow_admin_user,
                       "password": stack.airflow_admin_password}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{stack.airflow_port}/auth/token", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in {200, 201}
        assert json.loads(resp.read())["access_token"]


# ---- who can get in --------------------------------------------------------------------------

def test_every_listener_of_the_stack_is_on_loopback(stack):
    """Every TCP socket the stack's processes (supervisord's tree: the services, Airflow's
    components and the Spark drivers they start) listen on is bound to loopback."""
    import psutil

    supervisord = psutil.Process(int((stack.run_dir / "supervisord.pid").read_text()))
    listeners = {}
    for proc in [supervisord, *supervisord.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    ip = ipaddress.ip_address(conn.laddr.ip)
                    ip = getattr(ip, "ipv4_mapped", None) or ip  # a JVM's ::ffff:127.0.0.1
                    listeners[(str(ip), conn.laddr.port)] = " ".join(proc.cmdline()[:3])
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    assert {(stack.pg_host, stack.pg_port), ("127.0.0.1", stack.kafka_port),
            ("127.0.0.1", stack.airflow_port)} <= set(listeners)
    exposed = {addr: cmd for addr, cmd in listeners.items() if not ipaddress.ip_address(addr[0]).is_loopback}
    assert exposed == {}
    assert not {port for _, port in listeners} & {8793, 8794}  # Airflow's log servers are off


def _entries(root: Path):
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / n for n in dirs + files)]:
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                yield path, st


def test_everything_under_the_stack_home_is_private_to_its_user(stack):
    """Files 0600 (or 0700), folders 0700: MinIO's data (it holds the pipeline key's secret),
    Superset's database and stamp, configs, logs, Airflow's task logs. The one exception is a
    PostgreSQL cluster made inside the home before it was private: the folders on its way are
    0711 (pass through, not list), as PostgreSQL runs as `postgres` when the stack runs as root.

    As root, the services' state folder is the service user's and private to it; the code copy
    and the configs are root's, readable (never writable) by the service group, nobody else's."""
    passable = {stack.home, stack.home / "postgres"} if stack.pg_data.is_relative_to(stack.home) else set()
    exposed = {}
    for root in dict.fromkeys([stack.home, stack.state, stack.log_dir]):
        for path, st in _entries(root):
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077 and not (path in passable and mode == 0o711):
                exposed[str(path)] = oct(mode)
    assert exposed == {}
    assert (stack.superset_home / "superset.db").is_file()
    assert any((stack.state / "minio" / "data").rglob("*"))
    if not stack.service_user:
        return
    import pwd

    user = pwd.getpwnam(stack.service_user)
    not_theirs = {str(p): (st.st_uid, st.st_gid) for p, st in _entries(stack.state)
                  if (st.st_uid, st.st_gid) != (user.pw_uid, user.pw_gid)}
    assert not_theirs == {}
    shared = {}  # root's; readable by the service group or by root only; writable by root only
    for root in (stack.app, stack.run_dir):
        for path, st in _entries(root):
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid != 0 or mode & 0o027 or (mode & 0o070 and st.st_gid != user.pw_gid):
                shared[str(path)] = (st.st_uid, st.st_gid, oct(mode))
    assert shared == {}
    assert stat.S_IMODE((stack.run_dir / "jobs-config.env").stat().st_mode) == 0o640
    assert (stack.app / "jobs" / "stream.py").read_bytes() == (stack.repo / "jobs" / "stream.py").read_bytes()


def test_as_root_no_service_runs_as_root(stack):
    """As root, supervisord alone stays root: PostgreSQL runs as `postgres`, everything else
    (Kafka, MinIO, Airflow's components, the producer, Superset, and the Spark drivers Airflow
    starts) as the stack's unprivileged service user."""
    import psutil

    if not stack.service_user:
        pytest.skip("`make up` did not run as root: every service runs as the user who started it")
    supervisord = psutil.Process(int((stack.run_dir / "supervisord.pid").read_text()))
    assert supervisord.username() == "root"
    sup = Supervisor(stack)
    programs = {name: info["pid"] for name, info in sup.all_info().items() if info["statename"] == "RUNNING"}
    assert sorted(programs) == sorted(["postgres", "kafka", "minio", *AIRFLOW_PROGRAMS, "producer", "superset"])
    users = {name: psutil.Process(pid).username() for name, pid in programs.items()}
    assert users == {**{name: stack.service_user for name in programs}, "postgres": "postgres"}

    def driver_users() -> set[str]:
        return {p.username() for p in stream_driver_processes(stack)}

    wait_for("a stream driver that Airflow started", driver_users, 240)
    assert driver_users() == {stack.service_user}
    as_root = {}
    for proc in supervisord.children(recursive=True):
        try:
            if proc.uids().effective == 0:
                as_root[proc.pid] = " ".join(proc.cmdline()[:3])
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    assert as_root == {}
