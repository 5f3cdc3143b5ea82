"""Where Spark drivers keep their temporary files, and the sweep that keeps them bounded.

By default Spark writes its block manager and shuffle folders (spark.local.dir), S3A's upload
buffers (hadoop.tmp.dir) and its JNI libraries (java.io.tmpdir: lz4, snappy) to /tmp, and
deletes them only at a clean exit. A kill -9 of a driver, a fault the stream is built to
survive, left them behind for good: one CI run left 50 of them in /tmp.

So every driver of the stack writes under SPARK_SCRATCH_DIR (the stack sets it, see
stack/services.py) and in a folder of its own, `driver-<pid>-<start time>`: the stack's
spark-submit (stack/bin/spark/spark-submit) makes it for the driver's JVM, and a driver that
starts its JVM in-process (the tests' sessions) makes it for itself. Each new driver
first removes the folders of drivers that are gone (by pid and process start time, so a reused
pid is not mistaken for a live driver), and the JNI libraries an hour old (a loaded library
stays mapped after its file is deleted). `make up` and `make down` sweep too:

    python -m jobs.scratch DIR     # remove what drivers that are gone left in DIR
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

DRIVER_PREFIX = "driver-"
# what the JVM extracts to java.io.tmpdir and deletes at a clean exit only
NATIVE_LIBRARIES = ("liblz4-java-*.so", "liblz4-java-*.so.lck", "snappy-*-libsnappyjava.so")
NATIVE_MIN_AGE_S = 3600.0


def process_start(pid: int) -> str | None:
    """Return the start time of process `pid` (clock ticks since boot), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[19]  # field 22 of proc(5); the first two are before the ')'


def driver_folder_name(pid: int) -> str:
    """Return the scratch folder name of the running process `pid`."""
    start = process_start(pid)
    if start is None:
        raise ProcessLookupError(f"no process {pid}")
    return f"{DRIVER_PREFIX}{pid}-{start}"


def is_live_driver(name: str) -> bool:
    """Tell whether a `driver-<pid>-<start>` folder belongs to a process still running."""
    try:
        pid, start = name.removeprefix(DRIVER_PREFIX).split("-")
        return process_start(int(pid)) == start
    except ValueError:
        return False


def sweep(root: Path, *, native_min_age_s: float = NATIVE_MIN_AGE_S, now: float | None = None) -> list[Path]:
    """Remove from `root` the folders of drivers that are gone and the JNI libraries older than
    `native_min_age_s`; leave everything else. Return what was removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        try:
            st = entry.lstat()
        except FileNotFoundError:  # its driver removed it meanwhile
            continue
        if os.geteuid() != 0 and st.st_uid != os.geteuid():
            continue  # another user's: theirs to sweep
        if entry.name.startswith(DRIVER_PREFIX) and stat.S_ISDIR(st.st_mode):
            if not is_live_driver(entry.name):
                shutil.rmtree(entry)  # follows no link (fd-based on Linux)
                removed.append(entry)
        elif stat.S_ISREG(st.st_mode) and any(fnmatch.fnmatch(entry.name, p) for p in NATIVE_LIBRARIES):
            if now - st.st_mtime > native_min_age_s:
                entry.unlink()
                removed.append(entry)
    return removed


def driver_scratch(root: Path) -> Path:
    """Sweep `root`, then make and return this process's own scratch folder in it (private)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = sweep(root)
    if removed:
        log.info("removed %d temporary folder(s) and file(s) that drivers that are gone left in %s",
                 len(removed), root)
    own = root / driver_folder_name(os.getpid())
    own.mkdir(mode=0o700)  # not exist_ok: a folder already there is not ours
    return own


def spark_scratch_conf(root: str | None, executor_java_options: str = "",
                       given: str | None = None) -> dict[str, str]:
    """Return the Spark settings that put this driver's temporary files in its scratch folder
    under `root` (SPARK_SCRATCH_DIR), or nothing when `root` is unset or empty. The folder is
    `given` (SPARK_DRIVER_SCRATCH: the one stack/bin/spark/spark-submit made for the driver's
    JVM), else one made for this process. Its executors' JVMs get it as java.io.tmpdir after
    `executor_java_options`."""
    if not root:
        return {}
    if given:
        sweep(Path(root))
        own = Path(given)
    else:
        own = driver_scratch(Path(root))
    return {"spark.local.dir": str(own), "spark.hadoop.hadoop.tmp.dir": str(own / "hadoop"),
            "spark.executor.extraJavaOptions": f"{executor_java_options} -Djava.io.tmpdir={own}".strip()}


@contextmanager
def jvm_tmpdir(conf: dict[str, str]) -> Iterator[None]:
    """While a SparkSession is built from `conf` in this process (not under spark-submit, whose
    JVM already runs): the JVM PySpark starts gets the driver's scratch folder as java.io.tmpdir."""
    folder = conf.get("spark.local.dir")
    saved = os.environ.get("SPARK_SUBMIT_OPTS")
    if folder:  # read by the spark-submit PySpark launches the JVM with; the last -D wins
        os.environ["SPARK_SUBMIT_OPTS"] = f"{saved or ''} -Djava.io.tmpdir={folder}".strip()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SPARK_SUBMIT_OPTS", None)
        else:
            os.environ["SPARK_SUBMIT_OPTS"] = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.scratch", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a SPARK_SCRATCH_DIR")
    args = parser.parse_args(argv)
    removed = sweep(args.root)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} left by drivers that are gone "
          f"from {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
