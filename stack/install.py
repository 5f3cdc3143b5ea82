"""Installing what the local stack needs: prerequisites, jars, Go binaries, PostgreSQL."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stack.settings import StackSettings

log = logging.getLogger(__name__)

# MinIO's community edition ships as source only; `go install` is its official install.
# The Go module proxy refuses the last release's commit (9e49d5e7a648, 403 "not available")
# but serves the newest commit of master, which we pin instead (see docs/versions.md).
MINIO_MODULE = "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"
# MinIO's client, for the admin API (users, policies): the proxy serves this commit only.
MC_MODULE = "github.com/minio/mc@v0.0.0-20250313080218-cf909e1063a9"
POSTGRES_DEBIAN_PACKAGE = "postgresql-15"


class MissingPrerequisite(RuntimeError):
    """A tool the stack needs is absent; the message names it and how to get it."""


def _need(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise MissingPrerequisite(f"`{tool}` not found on PATH. {how}")
    return path


def check_java() -> str:
    """Return the java binary after checking it is Java 17 or newer."""
    java = _need(
        "java",
        "Install a JDK 17+ (Debian: `apt-get install openjdk-17-jdk-headless`) or set JAVA_HOME/PATH.",
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=True).stderr
    match = re.search(r'version "(\d+)', out)
    if not match or int(match.group(1)) < 17:
        raise MissingPrerequisite(f"Java 17 or newer is required, found: {out.splitlines()[0]}")
    return java


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def fetch_jars(settings: StackSettings) -> bool:
    """Fetch the Spark and Kafka jars with Maven into the cache; return True if it ran.

    Jars the pyspark wheel already ships (Jackson, log4j, slf4j, lz4 ...) are removed so
    Spark's own versions win (VERSIONS.md: Delta drags in older duplicates).
    """
    ran = False
    for name in ("spark", "kafka"):
        pom = settings.repo / "stack" / "jars" / name / "pom.xml"
        dest = settings.jars_dir / name
        stamp = dest / ".pom-digest"
        digest = _digest(pom)
        if stamp.exists() and stamp.read_text() == digest:
            continue
        mvn = _need("mvn", "Install Maven (Debian: `apt-get install maven`).")
        log.info("fetching %s jars with Maven into %s", name, dest)
        if dest.exists():
            shutil.rmtree(dest)
        subprocess.run(
            # --strict-checksums: a download whose checksum is missing or wrong fails the build
            [mvn, "-q", "-B", "--strict-checksums", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={dest}", "-DincludeScope=runtime"],
            check=True,
        )
        if name == "spark":
            _drop_jars_shipped_by_pyspark(settings, dest)
        stamp.write_text(digest)
        ran = True
    return ran


def build_project_jar(settings: StackSettings, java: str) -> bool:
    """Compile the project's JVM classes (jobs/jvm: the Delta log store and the checkpoint file
    manager) into their jar beside the Spark jars, with the javac of the JDK that runs Spark;
    return True if it ran."""
    from jobs.spark_conf import JVM_SOURCES, jvm_source_files, project_jar

    jar = project_jar(settings.jars_dir / "spark")
    if jar.is_file():
        return False
    javac = Path(java).resolve().parent / "javac"
    if not javac.exists():
        raise MissingPrerequisite(f"no javac beside {java}: the project's JVM classes (jobs/jvm) are compiled at "
                                  "`make up`. Install the JDK (Debian: `apt-get install openjdk-17-jdk-headless`)")
    pyspark_jars = sorted(settings.venv.glob("lib/python3*/site-packages/pyspark/jars"))
    if not pyspark_jars or not any(pyspark_jars[-1].glob("hadoop-client-api-*.jar")):
        raise MissingPrerequisite(f"no pyspark jars (Spark's, Hadoop's API) under {settings.venv}: "
                                  "the venv is incomplete")
    log.info("compiling %s into %s", JVM_SOURCES, jar)
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as scratch:
        classpath = os.pathsep.join([str(jar.parent.parent / "*"), str(pyspark_jars[-1] / "*")])
        subprocess.run([str(javac), "--release", "17", "-Xlint:all,-path,-processing", "-Werror", "-cp", classpath,
                        "-d", scratch, *map(str, jvm_source_files())], check=True)
        built = Path(scratch) / jar.name
        subprocess.run([str(javac.parent / "jar"), "--create", "--file", str(built), "-C", scratch, "iot"], check=True)
        built.replace(jar)  # whole or not at all: a concurrent `make up` of another clone sees no half jar
    return True


def _artifact(jar: str) -> str:
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar)


def _drop_jars_shipped_by_pyspark(settings: StackSettings, dest: Path) -> None:
    wheel_jars = list(settings.venv.glob("lib/python3*/site-packages/pyspark/jars/*.jar"))
    if not wheel_jars:
        raise MissingPrerequisite(f"no pyspark jars under {settings.venv}: the venv is incomplete")
    drop_jars_shipped_by(wheel_jars, dest)


def drop_jars_shipped_by(wheel_jars: list[Path], dest: Path) -> list[str]:
    """Delete the jars in `dest` whose artifact is among `wheel_jars`; return their names.

    Shared by `make up` and the Docker image build (stack/image.py).
    """
    shipped = {_artifact(p.name) for p in wheel_jars}
    dropped = []
    for jar in sorted(dest.glob("*.jar")):
        if _artifact(jar.name) in shipped:
            jar.unlink()
            dropped.append(jar.name)
    return dropped


def build_go_binaries(settings: StackSettings) -> bool:
    """Build minio and mc with `go install` into the cache; return True if it ran."""
    ran = False
    for binary, module in (("minio", MINIO_MODULE), ("mc", MC_MODULE)):
        target = settings.gobin / binary
        stamp = settings.gobin / f".{binary}-module"
        if target.exists() and stamp.exists() and stamp.read_text() == module:
            continue
        go = _need("go", "Install Go 1.24+ (https://go.dev/doc/install) to build MinIO from source.")
        log.info("building %s with `go install %s` (a few minutes the first time)", binary, module)
        env = {**os.environ, "GOBIN": str(settings.gobin), "GOFLAGS": "-buildvcs=false"}
        subprocess.run([go, "install", module], check=True, env=env)
        stamp.write_text(module)
        ran = True
    return ran


def build_superset_venv(settings: StackSettings) -> bool:
    """Build Superset's own virtualenv from stack/superset/requirements.lock; True if it ran.

    Superset pins SQLAlchemy < 2, pandas < 2.2 and pyarrow < 19, so it cannot share Airflow's
    venv (VERSIONS.md). About 0.8 GB and 6 minutes from an empty pip cache.
    """
    venv = settings.superset_venv
    if (venv / ".complete").exists():
        return False
    venv.parent.mkdir(parents=True, exist_ok=True)
    # one build at a time (another clone's `make up` may be building the same one)
    with open(venv.with_name(venv.name + ".building"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return False
        _build_superset_venv(settings, venv)
    return True


def _build_superset_venv(settings: StackSettings, venv: Path) -> None:
    log.info("building Superset's virtualenv %s (about 6 minutes the first time)", venv)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # by the hashes in the lock files (stack/lock.py): a file that differs from what was locked fails
    subprocess.run([*pip, "install", "--quiet", "--require-hashes", "-r",
                    str(settings.repo / "stack" / "pip.lock")], check=True)
    subprocess.run([*pip, "install", "--quiet", "--progress-bar", "off", "--require-hashes", "-r",
                    str(settings.repo / "stack" / "superset" / "requirements.lock")], check=True)
    (venv / ".complete").touch()


def postgres_bindir() -> Path:
    """Return the folder of PostgreSQL's server binaries, installing Debian's package if absent."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise MissingPrerequisite(
            "PostgreSQL server binaries (initdb, postgres) not found. "
            f"Install them: `sudo apt-get install {POSTGRES_DEBIAN_PACKAGE}`."
        )
    log.info("installing %s from Debian's packages", POSTGRES_DEBIAN_PACKAGE)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    # policy-rc.d keeps the package from starting its own cluster on our port.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", POSTGRES_DEBIAN_PACKAGE],
            check=True, env=env,
        )
    finally:
        if created:
            policy.unlink()
    return postgres_bindir()
