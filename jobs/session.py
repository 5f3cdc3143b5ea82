"""Building the SparkSession every job uses (the wiring side; no transformations here)."""

from __future__ import annotations

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
    with jvm_tmpdir(conf):
        return builder.getOrCreate()


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
