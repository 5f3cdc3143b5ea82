"""The Spark drivers' scratch folders (jobs/scratch.py): a driver that is gone leaves nothing
for long, a live one keeps its folder, and nothing else in the folder is touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.scratch import driver_folder_name, driver_scratch, is_live_driver, spark_scratch_conf, sweep

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gone_process():
    """Return the pid and folder name of a process that ran and has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    name = driver_folder_name(child.pid)
    child.stdin.close()
    child.wait(timeout=30)
    return child.pid, name


def test_a_gone_drivers_folder_is_removed_and_a_live_ones_kept(tmp_path, gone_process):
    _, gone_name = gone_process
    gone = tmp_path / gone_name
    (gone / "blockmgr-1" / "0a").mkdir(parents=True)
    (gone / "blockmgr-1" / "0a" / "shuffle_0_0_0.data").write_bytes(b"x" * 1000)
    live = tmp_path / driver_folder_name(os.getpid())
    (live / "spark-1").mkdir(parents=True)
    unrelated = tmp_path / "pytest"
    unrelated.mkdir()

    removed = sweep(tmp_path)

    assert removed == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "pytest"])
    assert (live / "spark-1").is_dir()


def test_a_reused_pid_is_not_taken_for_the_driver_that_had_it(tmp_path):
    # same pid as this process, another start time: the driver that had the pid is gone
    pid = os.getpid()
    own = driver_folder_name(pid)
    start = int(own.rsplit("-", 1)[1])
    stale = tmp_path / f"driver-{pid}-{start + 1}"
    stale.mkdir()
    assert not is_live_driver(stale.name)
    assert is_live_driver(own)
    assert sweep(tmp_path) == [stale]


def test_native_libraries_go_after_an_hour_and_other_files_stay(tmp_path):
    now = time.time()
    old_lib = tmp_path / "liblz4-java-123.so"
    old_lock = tmp_path / "liblz4-java-123.so.lck"
    old_snappy = tmp_path / "snappy-1.1.10-0a1b-libsnappyjava.so"
    new_lib = tmp_path / "liblz4-java-456.so"
    other = tmp_path / "notes.txt"
    for path in (old_lib, old_lock, old_snappy, new_lib, other):
        path.write_bytes(b"x")
    for path in (old_lib, old_lock, old_snappy, other):
        os.utime(path, (now - 3700, now - 3700))

    removed = sweep(tmp_path, now=now)

    assert sorted(p.name for p in removed) == sorted([old_lib.name, old_lock.name, old_snappy.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liblz4-java-456.so", "notes.txt"]


def test_a_link_named_like_a_gone_driver_is_left_and_not_followed(tmp_path, gone_process):
    _, gone_name = gone_process
    target = tmp_path / "elsewhere"
    (target / "keep").mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / gone_name).symlink_to(target)
    assert sweep(tmp_path / "scratch") == []
    assert (target / "keep").is_dir()


def test_a_new_driver_sweeps_then_makes_a_private_folder_of_its_own(tmp_path, gone_process):
    _, gone_name = gone_process
    root = tmp_path / "scratch"
    (root / gone_name).mkdir(parents=True)

    own = driver_scratch(root)

    assert own == root / driver_folder_name(os.getpid())
    assert [p.name for p in root.iterdir()] == [own.name]
    assert own.stat().st_mode & 0o777 == 0o700
    with pytest.raises(FileExistsError):  # a folder already there is not taken over
        driver_scratch(root)


def test_spark_settings_point_every_temporary_file_into_the_drivers_folder(tmp_path):
    assert spark_scratch_conf(None) == {}
    assert spark_scratch_conf("") == {}
    conf = spark_scratch_conf(str(tmp_path), "-Duser.timezone=UTC")
    own = tmp_path / driver_folder_name(os.getpid())
    assert conf == {
        "spark.local.dir": str(own),
        "spark.hadoop.hadoop.tmp.dir": str(own / "hadoop"),
        "spark.executor.extraJavaOptions": f"-Duser.timezone=UTC -Djava.io.tmpdir={own}",
    }


SHIM = REPO / "stack" / "bin" / "spark" / "spark-submit"


def fake_spark_submit(folder):
    """Return a folder holding a `spark-submit` that prints its pid, start time and environment."""
    folder.mkdir()
    fake = folder / "spark-submit"
    fake.write_text('#!/usr/bin/env bash\nread -r stat < /proc/$$/stat; read -r -a f <<< "${stat##*) }"\n'
                    'echo "$$-${f[19]}|${SPARK_DRIVER_SCRATCH:-}|${SPARK_SUBMIT_OPTS:-}|$*"\n')
    fake.chmod(0o755)
    return folder


def test_the_stacks_spark_submit_gives_the_driver_jvm_a_folder_named_after_its_pid(tmp_path):
    bin_dir = fake_spark_submit(tmp_path / "venv-bin")
    scratch = tmp_path / "scratch"
    env = {"PATH": f"{SHIM.parent}:{bin_dir}:/usr/bin:/bin", "SPARK_SCRATCH_DIR": str(scratch),
           "SPARK_SUBMIT_OPTS": "-Dx=1 -Djava.io.tmpdir=/tmp"}
    out = subprocess.run([str(SHIM), "--master", "local[1]", "job.py"], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    pid_start, folder, opts, args = out.split("|")
    assert folder == str(scratch / f"driver-{pid_start}")
    assert (scratch / f"driver-{pid_start}").stat().st_mode & 0o777 == 0o700
    assert opts == f"-Dx=1 -Djava.io.tmpdir=/tmp -Djava.io.tmpdir={folder}"  # the JVM takes the last
    assert args == "--master local[1] job.py"
    # the process that had it is gone: the next driver's sweep removes the folder
    assert sweep(scratch) == [scratch / f"driver-{pid_start}"]


def test_without_a_scratch_folder_the_stacks_spark_submit_is_the_venvs_unchanged(tmp_path):
    bin_dir = fake_spark_submit(tmp_path / "venv-bin")
    out = subprocess.run([str(SHIM), "job.py"], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.split("|")[1:] == ["", "", "job.py"]


def test_the_stacks_spark_submit_names_what_is_missing(tmp_path):
    result = subprocess.run([str(SHIM), "job.py"], env={"PATH": f"{SHIM.parent}:/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("spark-submit: no spark-submit on PATH besides ")
