"""The Spark drivers' class data sharing archive: what the stack's spark-submit gives a driver
when there is one (stack/bin/spark/spark-submit), and when `make up` makes it again
(stack/class_archive.py). That a real driver maps it: tests/integration/test_stream_faults.py
and test_stream_supervision.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from stack.class_archive import inputs_digest

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "stack" / "bin" / "spark" / "spark-submit"


def fake_spark_submit(folder: Path) -> Path:
    """A `spark-submit` that prints the Spark configuration folder, the JVM options and its arguments."""
    folder.mkdir()
    fake = folder / "spark-submit"
    fake.write_text('#!/usr/bin/env bash\necho "${SPARK_CONF_DIR:-}|${SPARK_SUBMIT_OPTS:-}|$*"\n')
    fake.chmod(0o755)
    return folder


@pytest.fixture
def layout(tmp_path):
    """A stack's Spark configuration folder and an archive folder (with its empty conf folder)."""
    conf = tmp_path / "spark-conf"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text("spark.ui.enabled false\n")
    archive = tmp_path / "spark-class-archive" / "driver.jsa"
    (archive.parent / "conf").mkdir(parents=True)
    bin_dir = fake_spark_submit(tmp_path / "venv-bin")
    env = {"PATH": f"{SHIM.parent}:{bin_dir}:/usr/bin:/bin", "SPARK_CONF_DIR": str(conf),
           "SPARK_CLASS_ARCHIVE": str(archive), "SPARK_SUBMIT_OPTS": "-Dx=1"}
    return SimpleNamespace(conf=conf, archive=archive, env=env)


def submit(env: dict[str, str]) -> list[str]:
    out = subprocess.run([str(SHIM), "--master", "local[1]", "job.py"], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    return out.split("|")


def test_a_driver_maps_the_archive_with_an_empty_conf_folder_and_the_stacks_defaults_by_name(layout):
    layout.archive.write_bytes(b"archive")
    conf_dir, opts, args = submit(layout.env)
    assert conf_dir == str(layout.archive.parent / "conf")
    assert opts == (f"-Dx=1 -Dlog4j2.configurationFile={layout.conf}/log4j2.properties "
                    f"-XX:SharedArchiveFile={layout.archive}")
    # first: a --properties-file given on the command line comes later and wins
    assert args == f"--properties-file {layout.conf}/spark-defaults.conf --master local[1] job.py"


def test_while_the_archive_is_made_the_driver_has_the_same_class_path_but_maps_none(layout):
    conf_dir, opts, args = submit(layout.env)
    assert conf_dir == str(layout.archive.parent / "conf")
    assert opts == f"-Dx=1 -Dlog4j2.configurationFile={layout.conf}/log4j2.properties"
    assert args.startswith(f"--properties-file {layout.conf}/spark-defaults.conf ")


@pytest.mark.parametrize("missing", ["SPARK_CLASS_ARCHIVE", "archive folder", "spark-defaults.conf"])
def test_without_an_archive_folder_or_the_stacks_defaults_spark_submit_is_unchanged(layout, missing):
    env = dict(layout.env)
    if missing == "SPARK_CLASS_ARCHIVE":
        del env["SPARK_CLASS_ARCHIVE"]
    elif missing == "archive folder":
        (layout.archive.parent / "conf").rmdir()
    else:
        (layout.conf / "spark-defaults.conf").unlink()
    assert submit(env) == [str(layout.conf), "-Dx=1", "--master local[1] job.py"]


@pytest.fixture
def stack_jars(tmp_path):
    """A venv's pyspark jars, spark-defaults.conf with an extra class path, and a `java`."""
    wheel = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pyspark" / "jars"
    wheel.mkdir(parents=True)
    (wheel / "spark-core.jar").write_bytes(b"core")
    extra = tmp_path / "cache" / "delta.jar"
    extra.parent.mkdir()
    extra.write_bytes(b"delta")
    conf = tmp_path / "spark-conf"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text(f"spark.ui.enabled false\nspark.driver.extraClassPath {extra}\n")
    java = tmp_path / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "17.0.17"\' >&2\n')
    java.chmod(0o755)
    return SimpleNamespace(s=SimpleNamespace(venv=tmp_path / "venv", spark_conf_dir=conf), java=str(java),
                           wheel=wheel, extra=extra)


def test_the_archive_is_made_again_when_a_jar_or_the_jdk_changes_and_only_then(stack_jars):
    s, java = stack_jars.s, stack_jars.java
    first = inputs_digest(s, java)
    assert inputs_digest(s, java) == first
    stat = stack_jars.extra.stat()
    os.utime(stack_jars.extra, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the JVM checks it
    touched = inputs_digest(s, java)
    assert touched != first
    (stack_jars.wheel / "kafka.jar").write_bytes(b"kafka")
    added = inputs_digest(s, java)
    assert added not in (first, touched)
    Path(java).write_text('#!/bin/sh\necho \'openjdk version "17.0.18"\' >&2\n')
    assert inputs_digest(s, java) not in (first, touched, added)


def test_a_session_built_from_python_gets_the_archive_as_spark_submit_gives_it_and_then_the_env_back(layout):
    from jobs.session import shared_classes

    layout.archive.write_bytes(b"archive")
    (layout.conf / "log4j2.properties").write_text("rootLogger.level = warn\n")
    environ = {"SPARK_CLASS_ARCHIVE": str(layout.archive), "SPARK_CONF_DIR": str(layout.conf)}
    with shared_classes(environ):
        assert environ["SPARK_CONF_DIR"] == str(layout.archive.parent / "conf")
        assert environ["SPARK_SUBMIT_OPTS"] == (f"-XX:SharedArchiveFile={layout.archive} "
                                                f"-Dlog4j2.configurationFile={layout.conf}/log4j2.properties")
    assert environ == {"SPARK_CLASS_ARCHIVE": str(layout.archive), "SPARK_CONF_DIR": str(layout.conf)}


def test_without_an_archive_a_session_built_from_python_starts_as_before(layout):
    from jobs.session import shared_classes

    environ = {"SPARK_CLASS_ARCHIVE": str(layout.archive), "SPARK_CONF_DIR": str(layout.conf)}
    with shared_classes(environ):  # `make up` has not made it
        assert environ == {"SPARK_CLASS_ARCHIVE": str(layout.archive), "SPARK_CONF_DIR": str(layout.conf)}
    with shared_classes({}):
        pass
