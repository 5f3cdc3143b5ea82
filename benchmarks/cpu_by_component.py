"""Run a command and print where the machine's CPU went meanwhile, by component.

Usage:
    stack/bin/stackctl python -m benchmarks.cpu_by_component [--interval 0.5] -- COMMAND...
    e.g. ... -- python -m pytest -q -p no:logging tests/integration

Every process on the machine is sampled from /proc each interval and put in a component by its
command line: the pipeline's own stream and producer, each Spark job the tests start
(spark-submit's JVM and its Python driver together), the tests' process with its SparkSession,
Airflow's components and the task processes they fork, the broker, the object store, PostgreSQL,
Superset. The figures are CPU seconds (user + system) each component used while the command
ran, and its share of the machine's capacity (cores x wall time). A process that lives less
than one interval is missed, and one that exits loses at most an interval of its CPU: a lower
bound, close for anything that runs for seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """Return (start time, CPU seconds used) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # starttime; utime + stime


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _job_of(argv: list[str]) -> str | None:
    """The jobs/<name>.py a Spark process (spark-submit's JVM or its Python driver) runs, and
    who started it: Airflow runs the deployed copy of the code, the tests the checkout's."""
    script = next((a for a in argv if a.endswith(".py") and "/jobs/" in a), None)
    if script is None:
        return None
    who = "Airflow" if "/app/jobs/" in script else "the tests"
    return f"spark job {Path(script).stem} (run by {who})"


RULES: list[tuple[str, str]] = [  # (a part of the command line, component), first match wins
    ("kafka.Kafka", "kafka broker"),
    ("minio server", "minio"),
    ("airflow scheduler", "airflow scheduler"),
    ("airflow api-server", "airflow api-server"),
    ("airflow dag-processor", "airflow dag-processor"),
    ("airflow triggerer", "airflow triggerer"),
    ("airflow worker", "airflow task processes"),
    ("superset", "superset"),
    ("gunicorn", "superset"),
    ("-m producer", "producer"),
    ("pytest", "pytest (tests' own code)"),
    ("pyspark-shell", "tests' SparkSession JVM"),
    ("supervisord", "supervisord"),
    ("chrom", "chromium (dashboard test)"),
]


def component(argv: list[str]) -> str:
    job = _job_of(argv)
    if job:
        return job
    if argv and Path(argv[0]).name.split(":")[0] == "postgres":  # postgres titles its backends "postgres: ..."
        return "postgresql"
    line = " ".join(argv)
    for part, name in RULES:
        if part in line:
            return name
    return f"other: {Path(argv[0]).name}" if argv and argv[0] else "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("--processes", type=Path, metavar="FILE",
                        help="also write one line per process seen to FILE (tab-separated: component, pid, "
                             "seconds from the start when first and last seen, CPU seconds), e.g. to see how "
                             "long each Spark job lived and what it used")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("command: give the command to run after --")
    if args.interval <= 0:
        parser.error("--interval must be above 0")

    used: dict[str, float] = defaultdict(float)
    # (pid, start time): a pid the kernel reuses is another process -> (CPU seconds at the last sample, component)
    seen: dict[tuple[str, int], tuple[float, str]] = {}
    lives: dict[tuple[str, int], list[float]] = {}  # -> [first seen, last seen, CPU seconds used]

    def sample(first: bool) -> None:
        now = time.monotonic() - started
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or (stat := _stat(pid)) is None:
                continue
            start, cpu = stat
            before = seen.get((pid, start))
            life = lives.setdefault((pid, start), [now, now, 0.0])
            if before is None:
                name = component(_cmdline(pid))
                # a process already running when we start counts from now; a new one from its start
                delta = 0.0 if first else cpu
            else:
                name = before[1]
                delta = cpu - before[0]
            used[name] += delta
            life[1], life[2] = now, life[2] + delta
            seen[(pid, start)] = (cpu, name)

    started = time.monotonic()
    sample(first=True)
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        time.sleep(args.interval)  # a sampling period, not a wait for a condition
        sample(first=False)
    wall = time.monotonic() - started
    capacity = wall * (os.cpu_count() or 1)
    total = sum(used.values())
    print(f"\ncpu_by_component: {' '.join(command)}: exit {proc.returncode}, {wall:.0f} s wall, "
          f"{total:.0f} CPU s used of {capacity:.0f} ({100 * total / capacity:.0f} %)")
    for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
        if cpu >= 0.5:
            count = sum(1 for key, (_, owner) in seen.items() if owner == name and lives[key][2] > 0)
            print(f"  {cpu:8.1f} CPU s  {100 * cpu / capacity:5.1f} %  {name} ({count} processes)")
    if args.processes:
        with args.processes.open("w") as out:
            out.write("component\tpid\tfirst_seen_s\tlast_seen_s\tcpu_s\n")
            for key, (first_seen, last_seen, cpu) in sorted(lives.items(), key=lambda kv: kv[1][0]):
                if cpu > 0:
                    out.write(f"{seen[key][1]}\t{key[0]}\t{first_seen:.1f}\t{last_seen:.1f}\t{cpu:.2f}\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
