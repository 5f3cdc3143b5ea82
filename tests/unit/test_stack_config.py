"""The local stack's configuration logic, without starting anything."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from common.env import Env, MissingSetting, parse_env_file
from jobs.spark_conf import JVM_SOURCES, lakehouse_spark_conf, project_jar, render_spark_defaults
from stack import init
from stack.services import airflow_env, kafka_properties, supervisord_conf
from stack.settings import GENERATED_SECRETS, ensure_env_file, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_env_file_parsing_handles_quotes_comments_and_export(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# comment\n\nA=1\nexport B='two words'\nC=\"x=y\"\nD=\n")
    assert parse_env_file(path) == {"A": "1", "B": "two words", "C": "x=y", "D": ""}


def test_env_file_parsing_names_the_bad_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\nthis is not an assignment\n")
    with pytest.raises(ValueError, match=r"\.env:2: expected KEY=value"):
        parse_env_file(path)


def test_missing_secret_names_the_variable():
    with pytest.raises(MissingSetting, match="S3_SECRET_KEY is not set"):
        Env({"S3_SECRET_KEY": ""}).require("S3_SECRET_KEY")


def test_bad_integer_names_the_variable():
    with pytest.raises(ValueError, match="KAFKA_PORT must be an integer, got 'abc'"):
        Env({"KAFKA_PORT": "abc"}).get_int("KAFKA_PORT", 9092)


def test_first_run_generates_every_secret_and_keeps_other_values(tmp_path):
    env_file = tmp_path / ".env"
    written = ensure_env_file(env_file, REPO / ".env.example")
    assert sorted(written) == sorted(GENERATED_SECRETS)
    values = parse_env_file(env_file)
    example = parse_env_file(REPO / ".env.example")
    for key in GENERATED_SECRETS:
        assert example[key] == "", f"{key} must be empty in .env.example"
        assert len(values[key]) >= 40
    assert {k: v for k, v in values.items() if k not in GENERATED_SECRETS} == {
        k: v for k, v in example.items() if k not in GENERATED_SECRETS}
    assert env_file.stat().st_mode & 0o777 == 0o600
    # A second run changes nothing.
    before = env_file.read_text()
    assert ensure_env_file(env_file, REPO / ".env.example") == []
    assert env_file.read_text() == before


def test_every_variable_the_code_reads_is_documented_in_env_example():
    example = parse_env_file(REPO / ".env.example")
    folders = ("stack", "jobs", "common", "producer", "dags", "dashboards", "orchestration")
    code = "\n".join(p.read_text() for folder in folders for p in (REPO / folder).rglob("*.py"))
    import re

    read = set(re.findall(r'env\.(?:get|require|get_int|get_float|get_bool)\(\s*"([A-Z0-9_]+)"', code))
    undocumented = read - set(example) - {"PYSPARK_PYTHON", "SPARK_JARS_DIR", "SPARK_SHUFFLE_PARTITIONS"}
    assert undocumented == set()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    ensure_env_file(env_file, REPO / ".env.example")
    values = parse_env_file(env_file) | {"STACK_HOME": str(tmp_path / "home"),
                                         "IOT_CACHE_DIR": str(tmp_path / "cache")}
    # the layout of a stack run by its own user (as root: root_settings)
    return dataclasses.replace(load_settings(Env(values)), service_user=None)


def test_kafka_listens_on_loopback_with_kraft_roles(settings):
    props = dict(line.split("=", 1) for line in kafka_properties(settings).splitlines()
                 if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == ("CLIENT://127.0.0.1:9092,INTERNAL://127.0.0.1:9094,"
                                  "CONTROLLER://127.0.0.1:9093")
    # every listener authenticates, and ACLs decide the rest
    assert set(props["listener.security.protocol.map"].split(",")) == {
        "CLIENT:SASL_PLAINTEXT", "INTERNAL:SASL_PLAINTEXT", "CONTROLLER:SASL_PLAINTEXT"}
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:broker;User:iot-admin"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"


def test_supervisord_programs_do_not_autostart_and_bind_loopback(settings):
    conf = supervisord_conf(settings, "/usr/bin/java", Path("/usr/lib/postgresql/15/bin"))
    programs = [line for line in conf.splitlines() if line.startswith("[program:")]
    assert programs == ["[program:postgres]", "[program:kafka]", "[program:minio]", "[program:producer]",
                        "[program:superset]", "[program:airflow-api-server]", "[program:airflow-scheduler]",
                        "[program:airflow-dag-processor]", "[program:airflow-triggerer]"]
    assert conf.count("autostart=false") == 9
    assert "listen_addresses=127.0.0.1" in conf
    assert "--address 127.0.0.1:9000 --console-address 127.0.0.1:9001" in conf
    # secrets live in mode-600 env files, not in the supervisord config
    assert settings.minio_root_password not in conf
    assert settings.airflow_db_password not in conf
    assert settings.superset_secret_key not in conf
    assert "--bind 127.0.0.1:8088" in conf
    # Airflow's log servers would bind 0.0.0.0 and [::] (8793, 8794): off, nothing reads them
    lines = conf.splitlines()
    commands = {line.split("]")[0][9:]: lines[i + 1] for i, line in enumerate(lines) if line.startswith("[program:")}
    assert commands["airflow-scheduler"].endswith("airflow scheduler --skip-serve-logs")
    assert commands["airflow-triggerer"].endswith("airflow triggerer --skip-serve-logs")


def test_airflow_env_sizes_for_two_cores_and_takes_connections_from_env(settings):
    env = airflow_env(settings)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert json.loads(env["AIRFLOW_CONN_SPARK_LAKEHOUSE"]) == {"conn_type": "spark", "host": "local[2]"}
    assert json.loads(env["AIRFLOW_CONN_SPARK_BATCH"]) == {"conn_type": "spark", "host": "local[2]"}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")


def test_pipeline_policy_covers_only_its_bucket():
    policy = init.bucket_policy("lakehouse")
    allowed = [stmt for stmt in policy["Statement"] if stmt["Effect"] == "Allow"]
    resources = {r for stmt in allowed for r in stmt["Resource"]}
    assert resources == {"arn:aws:s3:::lakehouse", "arn:aws:s3:::lakehouse/*"}
    actions = {a for stmt in allowed for a in stmt["Action"]}
    assert not any(a.startswith("admin:") or a in {"s3:*", "s3:CreateBucket", "s3:DeleteBucket"} for a in actions)
    # MinIO lets a user mint access keys for itself unless a policy denies it explicitly
    denied = [stmt["Action"] for stmt in policy["Statement"] if stmt["Effect"] == "Deny"]
    assert denied == [["admin:CreateServiceAccount"]]


def fake_jars(folder: Path, *names: str) -> Path:
    """Return a SPARK_JARS_DIR holding empty jars by `names` and the project's own jar."""
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    project_jar(folder).parent.mkdir()
    project_jar(folder).write_bytes(b"")
    return folder


def test_spark_defaults_never_holds_a_secret(tmp_path):
    jars = fake_jars(tmp_path / "jars", "delta-spark_4.2_2.13-4.4.0.jar")
    env = Env({"SPARK_JARS_DIR": str(jars), "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s3cr3t"})
    with_secrets = lakehouse_spark_conf(env)
    assert with_secrets["spark.hadoop.fs.s3a.secret.key"] == "s3cr3t"
    assert with_secrets["spark.sql.session.timeZone"] == "UTC"
    with pytest.raises(ValueError, match="refusing to write secrets"):
        render_spark_defaults(with_secrets)
    text = render_spark_defaults(lakehouse_spark_conf(env, include_secrets=False))
    assert "s3cr3t" not in text
    assert "spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension" in text


def test_jars_go_on_the_classpath_not_copied_per_driver(tmp_path):
    jars = fake_jars(tmp_path / "jars", "bundle-2.35.4.jar", "delta-spark_4.2_2.13-4.4.0.jar")
    conf = lakehouse_spark_conf(Env({"SPARK_JARS_DIR": str(jars)}), include_secrets=False)
    expected = f"{jars}/bundle-2.35.4.jar:{jars}/delta-spark_4.2_2.13-4.4.0.jar:{project_jar(jars)}"
    assert conf["spark.driver.extraClassPath"] == expected
    assert conf["spark.executor.extraClassPath"] == expected
    assert "spark.jars" not in conf  # each driver would copy every jar into its temp dir


def test_the_stream_driver_keeps_the_jit_at_c1_and_the_batch_jobs_do_not(tmp_path):
    from common.jvm import stream_driver_java_options

    jars = fake_jars(tmp_path / "jars", "delta-spark_4.2_2.13-4.4.0.jar")
    conf = lakehouse_spark_conf(Env({"SPARK_JARS_DIR": str(jars)}), include_secrets=False)
    assert conf["spark.driver.extraJavaOptions"] == (  # spark-defaults: every driver but the stream's
        "-Duser.timezone=UTC -XX:Tier4InvocationThreshold=50000 -XX:Tier4MinInvocationThreshold=6000 "
        "-XX:Tier4CompileThreshold=150000 -XX:Tier4BackEdgeThreshold=400000")
    told = Env({"SPARK_JARS_DIR": str(jars), "BATCH_DRIVER_JAVA_OPTIONS": "-XX:+UseSerialGC"})
    assert lakehouse_spark_conf(told, include_secrets=False)["spark.driver.extraJavaOptions"] == (
        "-Duser.timezone=UTC -XX:+UseSerialGC")
    assert stream_driver_java_options(Env({})) == (
        "-Duser.timezone=UTC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m")
    told = Env({"STREAM_DRIVER_JAVA_OPTIONS": "-XX:TieredStopAtLevel=4 -XX:+UseSerialGC"})
    assert stream_driver_java_options(told) == "-Duser.timezone=UTC -XX:TieredStopAtLevel=4 -XX:+UseSerialGC"


def test_missing_jars_name_the_fix(tmp_path):
    env = Env({"SPARK_JARS_DIR": str(tmp_path), "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s"})
    with pytest.raises(FileNotFoundError, match="run `make up` to fetch them"):
        lakehouse_spark_conf(env)
    (tmp_path / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"the project's Delta log store and checkpoint file manager.*"
                                                 r"run `make up` to build it"):
        lakehouse_spark_conf(env)


def test_the_delta_log_store_and_checkpoint_manager_are_the_projects_and_their_jar_follows_the_sources(tmp_path):
    jars = fake_jars(tmp_path / "jars", "delta-spark_4.2_2.13-4.4.0.jar")
    conf = lakehouse_spark_conf(Env({"SPARK_JARS_DIR": str(jars)}), include_secrets=False)
    assert conf["spark.delta.logStore.s3a.impl"] == "iot.lakehouse.delta.StartAfterS3LogStore"
    assert conf["spark.sql.streaming.checkpointFileManagerClass"] == (
        "iot.lakehouse.streaming.DirectWriteCheckpointFileManager")
    sources = sorted(JVM_SOURCES.rglob("*.java"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    assert project_jar(jars) == jars / "iot" / f"iot-lakehouse-jvm-{digest}.jar"


def test_long_stack_home_moves_supervisor_socket_to_tmp(settings):
    deep = dataclasses.replace(settings, home=Path("/" + "d" * 120))
    assert str(deep.supervisor_socket).startswith("/tmp/iot-lakehouse-")
    assert len(str(deep.supervisor_socket)) < 100


def test_stackctl_help_lists_every_command():
    out = subprocess.run([str(REPO / "stack" / "bin" / "stackctl"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("up", "down", "status", "clean", "sql"):
        assert f"    {command}" in out


def secret_values(settings) -> dict[str, str]:
    """Every secret of the stack's settings, by field name."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if any(w in f.name for w in ("password", "secret", "fernet"))}


def test_make_status_says_where_passwords_are_not_what_they_are(settings):
    from stack.manager import credentials

    text = "\n".join(credentials(settings).values())
    assert "AIRFLOW_ADMIN_PASSWORD in" in text
    assert "SUPERSET_ADMIN_PASSWORD in .env" in text
    leaked = {name for name, value in secret_values(settings).items() if value in text}
    assert leaked == set()


def test_no_secret_is_put_on_a_command_line_during_make_up(settings, monkeypatch):
    """`ps` shows every process's command line to every local user: the init steps of `make up`
    pass secrets through the environment, stdin or a private file."""
    calls = []

    def fake_run(argv, *args, **kwargs):
        calls.append([str(a) for a in argv])
        stdout = '{"status": "success", "policyName": "lakehouse-readwrite"}\n' if "mc" in str(argv[0]) else ""
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    settings.run_dir.mkdir(parents=True)
    settings.superset_home.mkdir(parents=True)
    init.init_minio(settings)
    init.migrate_airflow(settings)
    init.init_superset(settings)
    assert any("add" in c and settings.s3_access_key in c for c in calls)  # the key itself was created
    assert any(c[-1] == "dashboards.superset_admin" for c in calls)
    leaked = {(name, " ".join(c[:3])) for c in calls for name, value in secret_values(settings).items()
              if any(value in arg for arg in c)}
    assert leaked == set()


@pytest.mark.parametrize(("line", "message"), [
    ("KAFKA_PORT=ninety", "KAFKA_PORT must be a port number (1-65535), got 'ninety' (set in {env}:{n})"),
    ("POSTGRES_PORT=70000", "POSTGRES_PORT must be a port number (1-65535), got '70000' (set in {env}:{n})"),
    ("AIRFLOW_PORT=0", "AIRFLOW_PORT must be a port number (1-65535), got '0' (set in {env}:{n})"),
    ("SUPERSET_ADMIN_USER='admin", "{env}:{n}: SUPERSET_ADMIN_USER: no closing quotation (an unterminated quote?)"),
    ("this line has no equals sign", "{env}:{n}: expected KEY=value, got 'this line has no equals sign'"),
])
def test_make_up_with_a_broken_env_file_exits_2_naming_the_variable_and_line(tmp_path, line, message):
    """Nothing starts: the message says what to fix, where, and there is no traceback."""
    import sys

    env_file = tmp_path / ".env"
    ensure_env_file(env_file, REPO / ".env.example", tmp_path / "home")
    text = env_file.read_text() + "STACK_HOME=" + str(tmp_path / "home") + "\n"
    n = len(text.splitlines()) + 1
    env_file.write_text(text + line + "\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_PORT", "_USER")) and k != "STACK_HOME"}
    result = subprocess.run([sys.executable, "-m", "stack", "--env-file", str(env_file), "up"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "stackctl up: " + message.format(env=env_file, n=n)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "run").exists()  # nothing was rendered, let alone started


def test_a_job_started_by_airflow_gets_only_the_pipelines_secrets():
    from orchestration.operators import job_environment

    environ = {"PATH": "/usr/bin", "IOT_ENV_FILE": "/stack/run/airflow-config.env",
               "IOT_JOB_ENV_FILE": "/stack/run/jobs-config.env", "SPARK_CONF_DIR": "/c",
               "KAFKA_STREAM_PASSWORD": "ks", "KAFKA_ADMIN_PASSWORD": "ka", "KAFKA_PRODUCER_PASSWORD": "kp",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:pw@h/airflow",
               "AIRFLOW__CORE__FERNET_KEY": "f", "AIRFLOW__API_AUTH__JWT_SECRET": "j",
               "AIRFLOW__API__SECRET_KEY": "a", "AIRFLOW_CONN_IOT_POSTGRES": "{}", "AIRFLOW_HOME": "/h",
               "airflow_ctx_dag_id": "x", "_AIRFLOW_PROCESS_CONTEXT": "client",
               "PIPELINE_DB_PASSWORD": "p", "S3_SECRET_KEY": "s",
               "POSTGRES_SUPERUSER_PASSWORD": "su", "MINIO_ROOT_PASSWORD": "root", "BI_DB_PASSWORD": "bi",
               "SUPERSET_SECRET_KEY": "ss"}
    assert job_environment(environ) == {"PATH": "/usr/bin", "IOT_ENV_FILE": "/stack/run/jobs-config.env",
                                        "SPARK_CONF_DIR": "/c", "PIPELINE_DB_PASSWORD": "p", "S3_SECRET_KEY": "s",
                                        "KAFKA_STREAM_PASSWORD": "ks"}


def test_each_component_reads_an_env_file_with_only_its_own_secrets(settings):
    from common.env import GENERATED_SECRETS
    from stack.services import pipeline_env, scoped_env_file, superset_env, write_scoped_env_files

    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    env = Env({**parse_env_file(REPO / ".env.example"), "PIPELINE_DB_PASSWORD": values["pg_writer_password"],
               "S3_SECRET_KEY": values["s3_secret_key"], "POSTGRES_SUPERUSER_PASSWORD": "su",
               "MINIO_ROOT_PASSWORD": "root", "BI_DB_PASSWORD": "bi", "SUPERSET_SECRET_KEY": "ss",
               "SUPERSET_ADMIN_PASSWORD": "sa", "AIRFLOW_FERNET_KEY": "f", "KAFKA_TOPIC": "t",
               "KAFKA_STREAM_PASSWORD": "ks", "KAFKA_ADMIN_PASSWORD": "ka", "KAFKA_PRODUCER_PASSWORD": "kp",
               "KAFKA_BROKER_PASSWORD": "kb"})
    settings.run_dir.mkdir(parents=True)
    write_scoped_env_files(settings, env)
    held = {scope: {k for k, v in parse_env_file(scoped_env_file(settings, scope)).items()
                    if k in GENERATED_SECRETS and v} for scope in ("jobs", "airflow", "producer", "superset")}
    assert held == {"jobs": {"PIPELINE_DB_PASSWORD", "S3_SECRET_KEY", "KAFKA_STREAM_PASSWORD"},
                    "airflow": {"PIPELINE_DB_PASSWORD", "S3_SECRET_KEY", "KAFKA_STREAM_PASSWORD",
                                "KAFKA_ADMIN_PASSWORD"},
                    "producer": {"KAFKA_PRODUCER_PASSWORD"},
                    "superset": {"BI_DB_PASSWORD", "SUPERSET_SECRET_KEY", "SUPERSET_ADMIN_PASSWORD"}}
    assert parse_env_file(scoped_env_file(settings, "jobs"))["KAFKA_TOPIC"] == "t"  # settings pass through
    assert oct(scoped_env_file(settings, "jobs").stat().st_mode & 0o777) == "0o600"
    assert airflow_env(settings)["IOT_ENV_FILE"] == str(scoped_env_file(settings, "airflow"))
    assert airflow_env(settings)["IOT_JOB_ENV_FILE"] == str(scoped_env_file(settings, "jobs"))
    assert pipeline_env(settings)["IOT_ENV_FILE"] == str(scoped_env_file(settings, "producer"))
    assert superset_env(settings)["IOT_ENV_FILE"] == str(scoped_env_file(settings, "superset"))


def test_a_program_restarts_when_its_config_files_change(settings):
    """supervisord restarts a program on reload only when its section changes: each section
    carries a digest of the files the program reads."""
    def sections() -> dict[str, str]:
        conf = supervisord_conf(settings, "/usr/bin/java", Path("/usr/lib/postgresql/15/bin"))
        return {part.split("]")[0]: part for part in conf.split("[program:")[1:]}

    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "airflow-config.env").write_text("A=1\n")
    before = sections()
    (settings.run_dir / "airflow-config.env").write_text("A=2\n")
    after = sections()
    assert {name for name in before if before[name] != after[name]} == {
        "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


def test_the_rendered_path_is_the_same_whoever_runs_make_up(settings, monkeypatch):
    from stack.services import airflow_env

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    plain = airflow_env(settings)["PATH"]
    monkeypatch.setenv("PATH", f"{settings.venv / 'bin'}:{settings.venv / 'bin'}:/usr/bin:/bin:/usr/bin")
    # the stack's spark-submit first (stack/bin/spark/spark-submit), then the venv's
    shim = settings.app / "stack" / "bin" / "spark"
    assert airflow_env(settings)["PATH"] == plain == f"{shim}:{settings.venv / 'bin'}:/usr/bin:/bin"


def test_superset_s_path_is_the_same_from_airflow_s_environment(settings, monkeypatch):
    # the tests run `make up` with Airflow's environment, whose PATH has the stack's
    # spark-submit folder: Superset's PATH (which has no use for it) must not pick it up, else
    # that `make up` restarts Superset (a CI failure of test_second_up_is_harmless)
    from stack.services import airflow_env, superset_env

    monkeypatch.setenv("PATH", f"{settings.venv / 'bin'}:/usr/bin:/bin")
    plain = superset_env(settings)["PATH"]
    monkeypatch.setenv("PATH", f"{settings.venv / 'bin'}:{airflow_env(settings)['PATH']}")
    expected = f"{settings.superset_venv / 'bin'}:{settings.venv / 'bin'}:/usr/bin:/bin"
    assert superset_env(settings)["PATH"] == plain == expected


def test_scoped_env_files_are_the_same_whether_the_cache_comes_from_the_environment_or_not(settings):
    # a `make up` run from a process with the services' environment (IOT_CACHE_DIR set by
    # base_env, as the integration tests have it) must render the same files: else it restarts
    # Airflow, the producer and Superset for nothing
    from stack.services import scoped_env_file, write_scoped_env_files

    settings.run_dir.mkdir(parents=True)
    base = settings.config.as_dict()
    write_scoped_env_files(settings, Env({**base, "IOT_CACHE_DIR": ""}))
    first = {scope: scoped_env_file(settings, scope).read_text() for scope in ("jobs", "airflow", "producer")}
    write_scoped_env_files(settings, Env({**base, "IOT_CACHE_DIR": str(settings.cache_dir)}))
    second = {scope: scoped_env_file(settings, scope).read_text() for scope in ("jobs", "airflow", "producer")}
    assert first == second
    assert f"IOT_CACHE_DIR={settings.cache_dir}\n" in first["jobs"]


@pytest.mark.parametrize("lock", ["requirements.lock", "stack/superset/requirements.lock", "stack/pip.lock"])
def test_every_locked_package_is_pinned_to_its_hashes(lock):
    """pip installs these with --require-hashes: one pin without a hash, and the install fails."""
    text = (REPO / lock).read_text()
    requirements = [r.strip() for r in text.replace("\\\n", " ").splitlines() if r.strip() and not r.startswith("#")]
    assert requirements
    for requirement in requirements:
        name, _, rest = requirement.partition(" ")
        assert "==" in name, requirement
        assert rest.split(), name
        assert all(h.startswith("--hash=sha256:") and len(h) == 78 for h in rest.split()), name


def test_pip_and_every_package_install_by_hash_never_the_latest():
    sources = {path: (REPO / path).read_text() for path in ("stack/bin/stackctl", "stack/install.py",
                                                             "docker/Dockerfile", "Makefile")}
    for path, text in sources.items():
        assert "--upgrade pip" not in text, path
        assert "-U pip" not in text, path
        installs = [line for line in text.splitlines() if re.search(r'\binstall\b.*(\s-r\s|"-r")', line)]
        assert installs, path
        assert all("--require-hashes" in line for line in installs), path


def test_stack_lock_reads_versions_from_wheel_and_sdist_names():
    from stack.lock import canonical, file_version

    assert file_version("apache_airflow-3.3.2-py3-none-any.whl") == "3.3.2"
    assert file_version("psycopg2_binary-2.9.10-cp311-cp311-manylinux_2_17_x86_64.whl") == "2.9.10"
    assert file_version("Faker-38.2.0.tar.gz") == "38.2.0"
    assert file_version("zope.interface-7.2.zip") == "7.2"
    assert file_version("README.md") is None
    assert canonical("Flask_Caching") == canonical("flask.caching") == "flask-caching"


def test_spark_s_web_ui_which_has_no_login_is_off_unless_asked_for(tmp_path):
    jars = fake_jars(tmp_path / "jars", "delta-spark_4.2_2.13-4.4.0.jar")
    conf = lakehouse_spark_conf(Env({"SPARK_JARS_DIR": str(jars)}), include_secrets=False)
    assert conf["spark.ui.enabled"] == "false"
    assert (conf["spark.ui.retainedJobs"], conf["spark.ui.retainedStages"], conf["spark.sql.ui.retainedExecutions"]) \
        == ("100", "100", "100")
    on = lakehouse_spark_conf(Env({"SPARK_JARS_DIR": str(jars), "SPARK_UI_ENABLED": "true"}), include_secrets=False)
    assert on["spark.ui.enabled"] == "true"
    with pytest.raises(ValueError, match="SPARK_UI_ENABLED"):
        lakehouse_spark_conf(Env({"SPARK_JARS_DIR": str(jars), "SPARK_UI_ENABLED": "maybe"}), include_secrets=False)
