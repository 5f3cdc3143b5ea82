"""Building the SparkSession every job uses (the wiring side; no transformations here)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from common.env import Env
from jobs.scratch import jvm_tmpdir, spark_scratch_conf
from jobs.spark_conf import lakehouse_spark_conf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def build_spark(app_name: str, env: Env | None = None, master: str | None = None) -> SparkSession:
    """Return a SparkSession with Delta, S3A, the Kafka source, JDBC and UTC configured.

    Under `spark-submit` the jars come from spark-defaults.conf (written by `make up`); when
    run from plain Python they are passed here before the JVM starts. Secrets (the S3 key)
    are set only in-process, never written to a file.
    """
    import os

    from pyspark.sql import SparkSession

    env = env or Env()
    # Read by the JVM pyspark starts here: Spark's web UI binds to it, else to every interface.
    os.environ.setdefault("SPARK_LOCAL_IP", env.get("SPARK_LOCAL_IP", "127.0.0.1"))
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    # block manager folders, S3A buffers: in a folder of this driver's own, swept once it is gone
    conf = lakehouse_spark_conf(env)
    conf.update(spark_scratch_conf(env.get("SPARK_SCRATCH_DIR", ""), conf["spark.executor.extraJavaOptions"],
                                   os.environ.get("SPARK_DRIVER_SCRATCH")))
    for key, value in conf.items():
        builder = builder.config(key, value)
    with jvm_tmpdir(conf), shared_classes(os.environ):
        return builder.getOrCreate()


@contextmanager
def shared_classes(environ: MutableMapping[str, str]) -> Iterator[None]:
    """While a SparkSession of the project's class path is built in this process (not under
    spark-submit, whose JVM already runs): the JVM PySpark starts maps its classes from the
    stack's archive (SPARK_CLASS_ARCHIVE, stack/class_archive.py) as the stack's spark-submit
    gives it to a driver (stack/bin/spark/spark-submit, which says why): the archive's empty
    conf folder as SPARK_CONF_DIR, and SPARK_CONF_DIR's log4j2.properties by name. Nothing
    when there is no archive; the session's settings are given here, not read from
    spark-defaults.conf."""
    archive = Path(environ.get("SPARK_CLASS_ARCHIVE") or "/nonexistent")
    if not archive.is_file() or not (archive.parent / "conf").is_dir():
        yield
        return
    saved = {name: environ.get(name) for name in ("SPARK_CONF_DIR", "SPARK_SUBMIT_OPTS")}
    opts = [saved["SPARK_SUBMIT_OPTS"] or "", f"-XX:SharedArchiveFile={archive}"]
    if saved["SPARK_CONF_DIR"] and (Path(saved["SPARK_CONF_DIR"]) / "log4j2.properties").is_file():
        opts.append(f"-Dlog4j2.configurationFile={Path(saved['SPARK_CONF_DIR']) / 'log4j2.properties'}")
    environ["SPARK_CONF_DIR"] = str(archive.parent / "conf")
    environ["SPARK_SUBMIT_OPTS"] = " ".join(o for o in opts if o)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value


def pg_connect_kwargs(env: Env) -> dict:
    """Return psycopg2 connect arguments for the pipeline's PostgreSQL writer role."""
    return {
        "host": env.get("POSTGRES_HOST", "127.0.0.1"), "port": env.get_port("POSTGRES_PORT", 5432),
        "dbname": env.get("POSTGRES_DB", "iot"), "user": env.get("PIPELINE_DB_USER", "iot_writer"),
        "password": env.require("PIPELINE_DB_PASSWORD"),
    }


def jdbc_options(env: Env, table: str) -> dict[str, str]:
    """Return Spark JDBC options for the pipeline's PostgreSQL writer role."""
    host = env.get("POSTGRES_HOST", "127.0.0.1")
    port = env.get("POSTGRES_PORT", "5432")
    return {
        "url": f"jdbc:postgresql://{host}:{port}/{env.get('POSTGRES_DB', 'iot')}",
        "dbtable": table,
        "user": env.get("PIPELINE_DB_USER", "iot_writer"),
        "password": env.require("PIPELINE_DB_PASSWORD"),
        "driver": "org.postgresql.Driver",
    }
