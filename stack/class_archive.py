"""The Spark drivers' class data sharing archive, which `make up` makes.

A Spark driver of this project spends about 6 of the 15 CPU seconds of a short run loading
and verifying classes (Spark's, Delta's, the Kafka client's, S3A's and the AWS SDK's). The JVM
can write the classes a run loaded into an archive (-XX:ArchiveClassesAtExit) and map them from
it in later runs (-XX:SharedArchiveFile). `make up` runs jobs/class_archive.py once so, when the
archive is missing or what it was made from changed (the JDK, a jar of the class path); every
driver the stack's spark-submit starts then uses it (stack/bin/spark/spark-submit, which also
says why the drivers get an empty SPARK_CONF_DIR). An archive the JVM cannot use is skipped
with a warning, so a failed run here leaves the stack working as before, only slower to start
drivers: `make up` says so and goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import uuid
from pathlib import Path

from stack.services import base_env
from stack.settings import StackSettings

log = logging.getLogger(__name__)

TIMEOUT_S = 600


def class_path_entries(s: StackSettings) -> list[Path]:
    """Return the jars a driver's class path holds: the pyspark wheel's and spark-defaults'
    spark.driver.extraClassPath."""
    jars = sorted(s.venv.glob("lib/python3*/site-packages/pyspark/jars/*.jar"))
    defaults = s.spark_conf_dir / "spark-defaults.conf"
    for line in defaults.read_text().splitlines() if defaults.is_file() else []:
        key, _, value = line.partition(" ")
        if key == "spark.driver.extraClassPath":
            jars += [Path(p) for p in value.strip().split(os.pathsep) if p]
    return jars


def inputs_digest(s: StackSettings, java: str) -> str:
    """Return a digest of what an archive is valid for: the JDK (its binary and version) and
    every jar of the class path (name, size, modification time: what the JVM checks)."""
    digest = hashlib.sha256()
    version = subprocess.run([java, "-version"], capture_output=True, text=True, check=True).stderr
    digest.update(f"{os.path.realpath(java)}\0{version}\0".encode())
    for jar in class_path_entries(s):
        st = jar.stat()
        digest.update(f"{jar}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def ensure_archive(s: StackSettings, java: str) -> bool:
    """Make the archive if it is missing or out of date; return True if a run made it. A run
    that fails is logged with where its output is, and the stack goes on without an archive."""
    archive = s.spark_class_archive
    folder = archive.parent
    inputs = folder / "inputs"
    wanted = inputs_digest(s, java)
    if archive.is_file() and inputs.is_file() and inputs.read_text() == wanted:
        return False
    (folder / "conf").mkdir(mode=0o700, parents=True, exist_ok=True)  # the drivers' SPARK_CONF_DIR: empty
    for stale in (archive, inputs):
        stale.unlink(missing_ok=True)  # drivers running keep the one they mapped
    made = folder / f"driver.jsa.{os.getpid()}.tmp"
    log_file = s.log_dir / "spark-class-archive.log"
    # what the services' drivers run with (the deployed code, the jobs' env file with the stream's
    # login), but the scratch folder of drivers this user starts (as root the services' is theirs)
    env = {**os.environ, **base_env(s), "SPARK_SUBMIT_OPTS": f"-XX:ArchiveClassesAtExit={made}",
           "SPARK_SCRATCH_DIR": str(s.scratch_dirs["stackctl"])}
    command = [str(s.app / "stack" / "bin" / "spark" / "spark-submit"), "--master", "local[2]",
               str(s.app / "jobs" / "class_archive.py"),
               "--path", f"s3a://{s.bucket}/_class-archive/{uuid.uuid4().hex[:12]}"]
    log.info("making the Spark drivers' class archive (once; about 30 s): output in %s", log_file)
    try:
        with log_file.open("w") as out:
            exit_code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
                                       cwd=s.app).returncode
    except subprocess.TimeoutExpired:
        exit_code = f"none: still running after {TIMEOUT_S} s"
    if exit_code != 0 or not made.is_file():
        made.unlink(missing_ok=True)
        log.warning("the Spark drivers' class archive was not made (exit %s; see %s): drivers start without it, "
                    "slower", exit_code, log_file)
        return False
    made.chmod(0o600)
    os.replace(made, archive)
    inputs.write_text(wanted)
    if s.service_user:  # the services' drivers (Airflow's) map it too: root's, readable by their group
        from stack.service_user import existing, share_tree

        share_tree(folder, existing(s.service_user).gid)
    log.info("the Spark drivers' class archive: %s (%d MB)", archive, archive.stat().st_size // 2**20)
    return True
