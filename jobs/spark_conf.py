"""The project's Spark configuration, declared once.

Used three ways: the jobs build their SparkSession from it, `make up` writes it (without
secrets) to `$STACK_HOME/spark/conf/spark-defaults.conf` (as root, to the stack's run folder)
so an ad hoc `spark-submit` gets the same jars and settings, and the tests' SparkSession uses it.
No pyspark import here: the stack and the DAGs read it without starting a JVM.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from common.env import Env, default_cache_dir
from common.jvm import batch_driver_java_options

MIN_LOG_RETENTION_HOURS = 168
# Config keys that carry secrets: never written to a file.
SECRET_KEYS = frozenset({"spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key"})


def spark_jars_dir(env: Env) -> Path:
    """Return the folder of jars fetched by `make up` (stack/jars/spark/pom.xml)."""
    cache = Path(env.get("IOT_CACHE_DIR", str(default_cache_dir()))).expanduser()
    return Path(env.get("SPARK_JARS_DIR", str(cache / "jars" / "spark")))


JVM_SOURCES = Path(__file__).resolve().parent / "jvm"
# Delta's log store for s3a:// tables (jobs/jvm/iot/lakehouse/delta/StartAfterS3LogStore.java)
LOG_STORE_CLASS = "iot.lakehouse.delta.StartAfterS3LogStore"
# Spark's checkpoint file manager (jobs/jvm/iot/lakehouse/streaming/DirectWriteCheckpointFileManager.java)
CHECKPOINT_FILE_MANAGER_CLASS = "iot.lakehouse.streaming.DirectWriteCheckpointFileManager"


def jvm_source_files() -> list[Path]:
    """Return the project's Java sources (jobs/jvm), in the order their digest reads them."""
    return sorted(JVM_SOURCES.rglob("*.java"), key=lambda p: p.relative_to(JVM_SOURCES).as_posix())


def project_jar(jars_dir: Path) -> Path:
    """Return where `make up` builds the project's JVM classes (jobs/jvm) for this version of
    their sources: under the Spark jars' folder, in one of its own, named by the sources' hash
    (sha256 of the files' bytes, concatenated in path order; the Dockerfile names it alike)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in jvm_source_files())).hexdigest()[:12]
    return jars_dir / "iot" / f"iot-lakehouse-jvm-{digest}.jar"


def spark_jars(env: Env) -> list[str]:
    """Return the local paths of the extra jars; raise naming the fix when they are missing."""
    folder = spark_jars_dir(env)
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise FileNotFoundError(
            f"no Delta/Kafka/S3A jars in {folder}: run `make up` to fetch them with Maven, or set SPARK_JARS_DIR"
        )
    own = project_jar(folder)
    if not own.is_file():
        raise FileNotFoundError(f"no {own} (the project's Delta log store and checkpoint file manager, built from "
                                f"{JVM_SOURCES} with the JDK's javac): run `make up` to build it")
    return [*jars, str(own)]


def delta_log_retention(env: Env) -> str:
    """Return Delta's logRetentionDuration from DELTA_LOG_RETENTION_HOURS (default and least
    168: Delta refuses a log retention shorter than the tables' deletedFileRetentionDuration,
    7 days, which keeps VACUUM safe)."""
    hours = env.get_int("DELTA_LOG_RETENTION_HOURS", MIN_LOG_RETENTION_HOURS)
    if hours < MIN_LOG_RETENTION_HOURS:
        raise ValueError(f"DELTA_LOG_RETENTION_HOURS must be at least {MIN_LOG_RETENTION_HOURS} (Delta refuses a "
                         f"log retention shorter than deletedFileRetentionDuration, 7 days), got {hours}")
    return f"interval {hours} hours"


def lakehouse_spark_conf(env: Env, *, include_secrets: bool = True) -> dict[str, str]:
    """Return the Spark settings for Delta on S3A, the Kafka source, JDBC and UTC time."""
    endpoint = env.get("S3_ENDPOINT", "http://127.0.0.1:9000")
    jars = spark_jars(env)
    conf = {
        # On the JVM's classpath, not in spark.jars: spark.jars makes every driver copy each jar
        # (686 MB with the AWS SDK bundle) into its temp dir before the first task, a copy a
        # kill -9 leaves behind. The paths must exist on every worker: true on one machine and
        # in the Docker image (the same image everywhere).
        "spark.driver.extraClassPath": os.pathsep.join(jars),
        "spark.executor.extraClassPath": os.pathsep.join(jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # Timestamps are UTC end to end (ARCHITECTURE.md invariant 7).
        "spark.sql.session.timeZone": "UTC",
        # (the stream's driver replaces them with its own: stream_driver_java_options)
        "spark.driver.extraJavaOptions": batch_driver_java_options(env),
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.shuffle.partitions": env.get("SPARK_SHUFFLE_PARTITIONS", "4"),
        "spark.driver.memory": env.get("SPARK_DRIVER_MEMORY", "1g"),
        # Python workers must be the venv's interpreter (VERSIONS.md).
        "spark.pyspark.python": env.get("PYSPARK_PYTHON", sys.executable),
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": env.get("S3_REGION", "us-east-1"),
        "spark.hadoop.fs.s3a.path.style.access": env.get("S3_PATH_STYLE_ACCESS", "true"),
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(urlparse(endpoint).scheme == "https").lower(),
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        ),
        # Delta lists a table's _delta_log from a version on with S3's start-after, instead of
        # listing the whole folder several times a commit: the tables' aging, where each commit
        # cost more the longer the log grew (jobs/jvm/.../StartAfterS3LogStore.java)
        "spark.delta.logStore.s3a.impl": LOG_STORE_CLASS,
        # The stream's checkpoint files and Delta's checksum files go straight to their name
        # (an S3 upload is atomic) instead of a temporary file renamed, which on S3 is a copy:
        # 24 S3 calls and ~50 ms a file, 4 files a micro-batch (jobs/jvm/.../
        # DirectWriteCheckpointFileManager.java; Spark's rename where streams can't be aborted)
        "spark.sql.streaming.checkpointFileManagerClass": CHECKPOINT_FILE_MANAGER_CLASS,
        # Hadoop makes its local folders (S3A's upload buffers under hadoop.tmp.dir) with its own
        # umask, not the process's: 022 by default. The stack's files are private to their user.
        "spark.hadoop.fs.permissions.umask-mode": "077",
        # Creating a file skips S3A's probes for a directory or a file in its way (HEAD and LIST
        # calls); mkdir skips walking its parents. Safe here: Delta checks that a commit file is
        # new itself (one writer per table, jobs/maintenance.py), data files have unique names,
        # and the checkpoint file manager checks a file it must not overwrite before completing it.
        "spark.hadoop.fs.s3a.performance.flags": "create,mkdir",
        # Fail fast on an outage instead of retrying for minutes; the stream restarts from
        # its checkpoint (ARCHITECTURE.md invariant 5).
        "spark.hadoop.fs.s3a.attempts.maximum": "3",
        "spark.hadoop.fs.s3a.retry.limit": "3",
        "spark.ui.showConsoleProgress": "false",
        # Spark's web UI (port 4040 and up) has no login of its own: off, unless SPARK_UI_ENABLED
        # (then on SPARK_LOCAL_IP, loopback), for a debugging session. A driver's status store
        # keeps the last 100 jobs, stages and SQL executions (Spark keeps 1,000 each): the stream
        # runs three or four a micro-batch for weeks.
        "spark.ui.enabled": str(env.get_bool("SPARK_UI_ENABLED", False)).lower(),
        "spark.ui.retainedJobs": "100",
        "spark.ui.retainedStages": "100",
        "spark.sql.ui.retainedExecutions": "100",
        # Services bind to loopback unless told otherwise (a cluster sets SPARK_DRIVER_HOST).
        "spark.driver.bindAddress": env.get("SPARK_DRIVER_BIND_ADDRESS", "127.0.0.1"),
        "spark.driver.host": env.get("SPARK_DRIVER_HOST", "127.0.0.1"),
        # Delta on 2 cores: reconstruct table state with 2 tasks, not 50, and checkpoint the
        # log every 100 commits, not 10 (a checkpoint costs seconds; the stream commits ~1/s).
        "spark.databricks.delta.snapshotPartitions": env.get("DELTA_SNAPSHOT_PARTITIONS", "2"),
        "spark.databricks.delta.properties.defaults.checkpointInterval": env.get(
            "DELTA_CHECKPOINT_INTERVAL", "100"),
        # How long a table keeps its commit files (new tables; the stream sets it on its own,
        # jobs/sinks.py): the stream commits every few seconds, and Delta lists _delta_log on
        # every commit. Delta deletes expired ones at each log checkpoint, by whole days.
        "spark.databricks.delta.properties.defaults.logRetentionDuration": delta_log_retention(env),
        # VACUUM lists the table's directories with this many tasks (Spark's default: 10,000,
        # which took 8 minutes for a 4-file test table on 2 cores).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": env.get("SPARK_LISTING_PARALLELISM", "8"),
        # Record VACUUM in the table's history, like every other maintenance operation.
        "spark.databricks.delta.vacuum.logging.enabled": "true",
    }
    if include_secrets:
        conf["spark.hadoop.fs.s3a.access.key"] = env.require("S3_ACCESS_KEY")
        conf["spark.hadoop.fs.s3a.secret.key"] = env.require("S3_SECRET_KEY")
    return conf


def render_spark_defaults(conf: dict[str, str]) -> str:
    """Return spark-defaults.conf text for `conf`, refusing to write a secret."""
    leaked = SECRET_KEYS & conf.keys()
    if leaked:
        raise ValueError(f"refusing to write secrets to spark-defaults.conf: {sorted(leaked)}")
    lines = ["# Generated by `make up` from jobs/spark_conf.py; edits are overwritten."]
    lines += [f"{key} {value}" for key, value in sorted(conf.items())]
    return "\n".join(lines) + "\n"
