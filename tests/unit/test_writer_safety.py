"""Nothing can corrupt or wipe what is not its own: one writer per table, names all or nothing,
aggregates never replaced with nothing, and secrets never silently regenerated (issue 13,
points 1, 2 and 4). The parts that need PostgreSQL are in tests/integration/test_writer_safety.py."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.env import Env
from common.pipeline import NAME_OPTIONS, PipelineNames
from jobs.aggregates import AggregateSettings, check_within_retention
from jobs.maintenance import normalise_location, writer_resources
from jobs.transform import Thresholds
from stack.settings import (
    GENERATED_SECRETS,
    SecretLost,
    ensure_env_file,
    parse_env_file,
    record_secrets_in_use,
    secrets_in_use,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / ".env.example"


# ---- one lock per table, however its path is written -------------------------------------------

@pytest.mark.parametrize("written", [
    "s3a://lakehouse/bronze/sensor_readings",
    "s3a://lakehouse/bronze/sensor_readings/",
    "s3a://lakehouse//bronze///sensor_readings//",
    "s3://lakehouse/bronze/sensor_readings",
    "s3n://LakeHouse/bronze/sensor_readings",
    "s3a://lakehouse/bronze/./x/../sensor_readings",
    " s3a://lakehouse/bronze/sensor_readings ",
])
def test_one_table_has_one_location_however_it_is_written(written):
    assert normalise_location(written) == "s3a://lakehouse/bronze/sensor_readings"


def test_keys_are_case_sensitive_and_local_paths_absolute(tmp_path, monkeypatch):
    assert normalise_location("s3a://b/Bronze") != normalise_location("s3a://b/bronze")
    monkeypatch.chdir(tmp_path)
    assert normalise_location("tables/bronze/") == f"file:{tmp_path}/tables/bronze"
    assert normalise_location(f"file://{tmp_path}/tables//bronze/") == f"file:{tmp_path}/tables/bronze"
    with pytest.raises(ValueError, match="empty location"):
        normalise_location("  ")


def test_writer_resources_give_the_same_keys_for_the_same_folders():
    a = writer_resources("s3a://lh/checkpoints/x/", {"bronze": "s3a://lh/bronze/x/", "quarantine": "s3://lh/q/x"},
                         "iot", "iot")
    b = writer_resources("s3a://lh/checkpoints/x", {"bronze": "s3a://lh//bronze/x", "quarantine": "s3a://lh/q/x/"},
                         "iot", "iot")
    assert a == b
    assert sorted(a) == ["checkpoint:s3a://lh/checkpoints/x", "delta:s3a://lh/bronze/x", "delta:s3a://lh/q/x",
                         "pipeline-schema:iot.iot"]


@pytest.mark.parametrize(("checkpoint", "bronze", "quarantine", "clash"), [
    ("s3a://lh/c", "s3a://lh/t/", "s3a://lh/t", "bronze table"),
    ("s3a://lh/b/_checkpoint", "s3a://lh/b", "s3a://lh/q", "checkpoint"),
    ("s3a://lh/c", "s3a://lh/b", "s3a://lh/b/q", "quarantine table"),
])
def test_overlapping_locations_are_refused(checkpoint, bronze, quarantine, clash):
    with pytest.raises(ValueError, match=f"{clash}.*overlap: give each its own folder"):
        writer_resources(checkpoint, {"bronze": bronze, "quarantine": quarantine}, "iot", "iot")


# ---- ad hoc names are all or nothing --------------------------------------------------------------

ALL_NAMES = {"topic": "t", "checkpoint": "s3a://b/c", "bronze_path": "s3a://b/br", "quarantine_path": "s3a://b/q",
             "pg_schema": "s", "query_name": "q"}


PIPELINE = PipelineNames(topic="iot.sensor-readings", checkpoint="s3a://lakehouse/checkpoints/sensor_readings",
                         bronze_path="s3a://lakehouse/bronze/sensor_readings",
                         quarantine_path="s3a://lakehouse/quarantine/sensor_readings", pg_schema="iot",
                         query_name="sensor_readings")


def test_the_pipeline_s_names_come_from_the_environment_once():
    assert PipelineNames.from_env(Env({})) == PIPELINE
    env = Env({"LAKEHOUSE_BUCKET": "lh", "KAFKA_TOPIC": "t1", "PIPELINE_SCHEMA": "s1", "BRONZE_PATH": "s3a://x/b"})
    assert PipelineNames.from_env(env) == PipelineNames(
        topic="t1", checkpoint="s3a://lh/checkpoints/sensor_readings", bronze_path="s3a://x/b",
        quarantine_path="s3a://lh/quarantine/sensor_readings", pg_schema="s1", query_name="sensor_readings")


def test_no_names_is_the_pipeline_and_all_names_are_a_stream_of_ones_own():
    assert PIPELINE.own(dict.fromkeys(ALL_NAMES)) == PIPELINE
    assert PIPELINE.own(dict.fromkeys(ALL_NAMES, "")) == PIPELINE  # Airflow passes unset params as ""
    assert PIPELINE.own({**ALL_NAMES, "trigger_seconds": 5.0}) == PipelineNames(**ALL_NAMES)


def test_a_dag_run_s_params_override_the_names_they_give():
    params = {"topic": "t", "pg_schema": " ", "query_name": "", "recompute": "all"}
    assert PIPELINE.with_params(params) == PipelineNames(**{**PIPELINE.__dict__, "topic": "t"})


@pytest.mark.parametrize("given", [["bronze_path"], ["checkpoint"], ["topic", "pg_schema", "query_name"],
                                   [k for k in ALL_NAMES if k != "quarantine_path"]])
def test_some_names_and_not_others_are_refused_naming_the_missing_ones(given):
    values = {k: (ALL_NAMES[k] if k in given else " ") for k in ALL_NAMES}
    with pytest.raises(ValueError, match="all or nothing") as raised:
        PIPELINE.own(values)
    message = str(raised.value)
    for key, option in NAME_OPTIONS.items():
        assert (option in message.split("but not")[1].split(".")[0]) == (key not in given), (option, message)


def test_the_stream_cli_refuses_some_names_before_starting_spark(capsys, monkeypatch, tmp_path):
    from jobs.stream import main

    monkeypatch.setenv("IOT_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("PIPELINE_DB_PASSWORD", "unused")
    monkeypatch.setenv("KAFKA_STREAM_PASSWORD", "unused")
    with pytest.raises(SystemExit) as exited:
        main(["--bronze-path", "s3a://lakehouse/tests/mine/bronze", "--pg-schema", "mine"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--bronze-path, --pg-schema given, but not --topic, --checkpoint, --quarantine-path, --query-name" in err
    with pytest.raises(SystemExit):
        main([
            "--topic", "t", "--checkpoint", "s3a://lh/x/", "--bronze-path", "s3a://lh/x", "--quarantine-path",
            "s3a://lh/q", "--pg-schema", "s", "--query-name", "q"])
    assert "overlap" in capsys.readouterr().err


# ---- aggregates: never a window the lake no longer holds ------------------------------------------

def aggregate_settings(start: datetime, lake_days: int) -> AggregateSettings:
    return AggregateSettings(start=start, end=start + timedelta(hours=1), bronze_path="s3a://b/bronze",
                             pg_schema="s", pg_connect={}, thresholds=Thresholds(), lateness_hours=2,
                             anomaly_delta_c=10.0, lake_days=lake_days)


def test_a_window_older_than_the_lake_retention_is_refused():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    check_within_retention(aggregate_settings(datetime(2026, 11, 20, 1, tzinfo=UTC), 10), now)  # 2026-11-20 kept
    with pytest.raises(ValueError, match=r"older than the lake's retention: RETENTION_LAKE_DAYS=10 keeps "
                                         r"partitions from 2026-11-20 on"):
        check_within_retention(aggregate_settings(datetime(2026, 11, 19, 23, tzinfo=UTC), 10), now)


def test_the_aggregates_cli_refuses_an_expired_window_with_exit_2(capsys, monkeypatch, tmp_path):
    from jobs.aggregates import main

    monkeypatch.setenv("IOT_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("PIPELINE_DB_PASSWORD", "unused")
    monkeypatch.setenv("RETENTION_LAKE_DAYS", "30")
    start = (datetime.now(UTC) - timedelta(days=40)).replace(minute=0, second=0, microsecond=0)
    with pytest.raises(SystemExit) as exited:
        main(["--start", start.isoformat(), "--end", (start + timedelta(hours=1)).isoformat()])
    assert exited.value.code == 2
    assert "older than the lake's retention: RETENTION_LAKE_DAYS=30" in capsys.readouterr().err


# ---- secrets: never silently regenerated; .env private from its first byte -------------------------

def test_a_lost_secret_of_an_initialised_stack_is_refused_not_regenerated(tmp_path):
    env_file, home = tmp_path / ".env", tmp_path / "home"
    ensure_env_file(env_file, EXAMPLE, home)
    record_secrets_in_use(home, set(GENERATED_SECRETS))
    original = env_file.read_text()
    env_file.write_text("".join(line + "\n" for line in original.splitlines()
                                if not line.startswith("POSTGRES_SUPERUSER_PASSWORD=")))
    before = env_file.read_text()
    with pytest.raises(SecretLost, match=r"lacks POSTGRES_SUPERUSER_PASSWORD, which the stack in .* was "
                                         r"initialised with.*`make clean` then `make up`"):
        ensure_env_file(env_file, EXAMPLE, home)
    assert env_file.read_text() == before  # untouched
    env_file.unlink()
    with pytest.raises(SecretLost, match="lacks AIRFLOW_ADMIN_PASSWORD, AIRFLOW_API_SECRET_KEY"):
        ensure_env_file(env_file, EXAMPLE, home)
    assert not env_file.exists()


def test_a_secret_the_stack_never_used_is_generated_by_rename(tmp_path):
    env_file, home = tmp_path / ".env", tmp_path / "home"
    ensure_env_file(env_file, EXAMPLE, home)
    record_secrets_in_use(home, set(GENERATED_SECRETS) - {"METABASE_ADMIN_PASSWORD"})
    values = parse_env_file(env_file)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items() if k != "METABASE_ADMIN_PASSWORD"))
    env_file.chmod(0o644)
    inode = env_file.stat().st_ino
    assert ensure_env_file(env_file, EXAMPLE, home) == ["METABASE_ADMIN_PASSWORD"]
    after = parse_env_file(env_file)
    assert {k: v for k, v in after.items() if k != "METABASE_ADMIN_PASSWORD"} == {
        k: v for k, v in values.items() if k != "METABASE_ADMIN_PASSWORD"}
    assert len(after["METABASE_ADMIN_PASSWORD"]) == 40
    assert env_file.stat().st_ino != inode  # rewritten by rename, never in place
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_stack_initialised_before_the_record_counts_every_secret_as_used(tmp_path):
    home = tmp_path / "home"
    assert secrets_in_use(home) == set()
    (home / "run").mkdir(parents=True)
    assert secrets_in_use(home) == set(GENERATED_SECRETS) - {"KAFKA_BROKER_PASSWORD", "KAFKA_ADMIN_PASSWORD",
                                                             "KAFKA_PRODUCER_PASSWORD", "KAFKA_STREAM_PASSWORD"}


def test_a_short_jwt_secret_is_rotated_to_64_bytes(tmp_path):
    env_file, home = tmp_path / ".env", tmp_path / "home"
    ensure_env_file(env_file, EXAMPLE, home)
    assert len(parse_env_file(env_file)["AIRFLOW_JWT_SECRET"]) >= 64
    record_secrets_in_use(home, set(GENERATED_SECRETS))
    text = "".join(f"{k}={'a' * 40 if k == 'AIRFLOW_JWT_SECRET' else v}\n"
                   for k, v in parse_env_file(env_file).items())
    env_file.write_text(text)
    assert ensure_env_file(env_file, EXAMPLE, home) == ["AIRFLOW_JWT_SECRET"]
    assert len(parse_env_file(env_file)["AIRFLOW_JWT_SECRET"]) >= 64


def test_env_file_is_never_readable_by_others_even_while_written(tmp_path, monkeypatch):
    """The file is created by open(O_CREAT | O_EXCL, 0o600) under its final mode: a permissive
    umask cannot widen it, and no chmod after the fact is needed."""
    modes = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if flags & os.O_CREAT:
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0)
    try:
        ensure_env_file(tmp_path / ".env", EXAMPLE, tmp_path / "home")
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_each_stack_has_its_own_postgres_folder_even_at_a_reused_path(tmp_path, monkeypatch):
    """As root the cluster lives outside the home. Named after the home's path, a new clone at
    the same path (CI reuses its folder) found the old clone's cluster and its passwords."""
    import hashlib
    import shutil

    from stack import settings as stack_settings

    monkeypatch.setattr(stack_settings, "PG_ROOT_DATA", tmp_path / "var-lib")
    home = tmp_path / "clone" / ".stack"
    first = stack_settings.stack_id(home)
    assert stack_settings.stack_id(home) == first  # stable
    shutil.rmtree(tmp_path / "clone")  # the clone is deleted; its cluster stays behind
    (tmp_path / "var-lib" / first / "postgres").mkdir(parents=True)
    assert stack_settings.stack_id(home) != first  # a new clone at the same path: a new cluster
    # a stack made by the older version, which named the folder after the path, keeps its cluster
    older = tmp_path / "older" / ".stack"
    (older / "run").mkdir(parents=True)
    by_path = hashlib.sha256(str(older).encode()).hexdigest()[:12]
    (tmp_path / "var-lib" / by_path / "postgres").mkdir(parents=True)
    (tmp_path / "var-lib" / by_path / "postgres" / "PG_VERSION").write_text("15\n")
    assert stack_settings.stack_id(older) == by_path
