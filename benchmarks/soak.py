"""Soak: the Airflow-supervised pipeline as it runs for weeks, measured window by window.

Usage (the stack up: `make up`):
    stack/bin/stackctl python -m benchmarks.soak [--duration 2h] [--window 10m]
                                                 [--rate 50] [--trigger-seconds 5] [--sample 15s]

It measures the pipeline itself, not a copy: the `iot_stream` DAG's driver on the pipeline's
topic and tables, the producer `make up` runs, and the hourly aggregates and daily retention
DAGs as scheduled. It writes nothing of its own. --rate and --trigger-seconds, when they differ
from the running configuration, are applied the way a user would: `stackctl up` with
PRODUCER_RATE and STREAM_TRIGGER_SECONDS in its environment (which wins over .env), then the
stream's driver is stopped gracefully so that Airflow starts one with the new trigger; at the
end the stack is brought back to .env's values the same way. A 1 s trigger ages the tables
about five times faster than the default 5 s.

For each window it prints:
- produce-to-visible latency, p50 and p99: ingested_at (the PostgreSQL transaction's time)
  minus event_time (the producer's send time) of the rows that became visible in the window;
- micro-batch total, median and p95, and the median of each part (validate, postgres,
  bronze, quarantine), from the stream's health rows;
- the stream's CPU in cores: every process of the driver (spark-submit's JVM, the PySpark
  driver), sampled every --sample;
- each aggregates or retention task that finished in the window: its run time, and the
  stream's produce-to-visible p99 while it ran;
- files and bytes of bronze and quarantine (data files), their _delta_log, and the checkpoint;
- the size of the always-running stream task's Airflow log.
At the end, the ratio of the last window to the first for every figure. Figures are for this
machine with whatever else runs on it: say what did when you quote them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime

import boto3
import psutil
from botocore.client import Config

from common.env import REPO_ROOT, Env
from common.pipeline import PipelineNames
from common.postgres import connection, in_schema
from stack.manager import Supervisor, airflow_api, stream_driver_processes
from stack.settings import ENV_FILE, load_settings

BATCH_DAGS = ("iot_aggregates", "iot_retention")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def duration(text: str) -> float:
    """Parse `90`, `90s`, `10m`, `2h` or `1d` into seconds (argparse type)."""
    match = DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 90s, 10m, 2h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
    return seconds


def positive(text: str) -> float:
    """A finite number above zero (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 < value < 1e6):
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and below 1,000,000")
    return value


# ---- the stream's driver ---------------------------------------------------------------------

def pipeline_drivers(s) -> list[psutil.Process]:
    """Return the processes of the pipeline's own stream (not an ad hoc run's: those name a
    --query-name)."""
    return [p for p in stream_driver_processes(s) if "--query-name" not in p.cmdline()]


class CpuSampler(threading.Thread):
    """Adds up the CPU seconds the pipeline's driver processes use, whichever pids they have."""

    def __init__(self, s, every_s: float) -> None:
        super().__init__(daemon=True, name="cpu-sampler")
        self.s, self.every_s = s, every_s
        self.seen: dict[int, float] = {}
        self.total = 0.0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def sample(self) -> None:
        procs = {}
        for proc in pipeline_drivers(self.s):
            procs[proc.pid] = proc
            try:  # with the Python workers the JVM forks
                procs.update((c.pid, c) for c in proc.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        for proc in procs.values():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            used = times.user + times.system
            with self.lock:
                self.total += used - self.seen.get(proc.pid, 0.0)
                self.seen[proc.pid] = used

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            self.sample()

    def seconds(self) -> float:
        """Return the CPU seconds used so far (as of the last sample)."""
        self.sample()
        with self.lock:
            return self.total


# ---- what one window measured ----------------------------------------------------------------

@dataclass
class Window:
    start: datetime
    end: datetime
    figures: dict[str, float | None] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Probe:
    """Reads what the pipeline did: PostgreSQL, MinIO, Airflow, the task log."""

    def __init__(self, s, env: Env) -> None:
        self.s = s
        self.stream = PipelineNames.from_env(env)  # the pipeline's names
        self.schema = self.stream.pg_schema
        self.s3 = boto3.client("s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
                               aws_access_key_id=s.s3_access_key, aws_secret_access_key=s.s3_secret_key,
                               config=Config(s3={"addressing_style": "path"}))
        self.api = airflow_api(s)

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        with connection(self.s.pg_params(), "iot-soak") as conn, conn.cursor() as cur:
            cur.execute(in_schema(self.schema, sql), args)
            return cur.fetchall()

    def latency(self, start: datetime, end: datetime) -> tuple[float | None, float | None, int]:
        """Return produce-to-visible p50 and p99 (s) of the rows made visible in [start, end), and how many."""
        row = self._query(
            "select percentile_cont(0.5) within group (order by lag), percentile_cont(0.99) within group "
            "(order by lag), count(*) from (select extract(epoch from ingested_at - event_time) as lag "
            "from {schema}.sensor_readings where ingested_at >= %s and ingested_at < %s "
            "and kafka_topic = %s) t", (start, end, self.stream.topic))[0]
        return row[0], row[1], row[2]

    def batches(self, start: datetime, end: datetime) -> dict[str, list[float]]:
        """Return each part's milliseconds of the stream's batches that finished in [start, end)."""
        rows = self._query(
            "select total_ms, validate_ms, postgres_ms, bronze_ms, quarantine_ms from {schema}.stream_health "
            "where batch_finished_at >= %s and batch_finished_at < %s and query_name = %s and topic = %s "
            "and total_ms is not null", (start, end, self.stream.query_name, self.stream.topic))
        names = ("total", "validate", "postgres", "bronze", "quarantine")
        return {n: [float(r[i]) for r in rows if r[i] is not None] for i, n in enumerate(names)}

    def finished_jobs(self, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
        """Return (dag, start, end) of the batch DAGs' task instances that ended in [start, end)."""
        found = []
        for dag in BATCH_DAGS:
            for ti in self.api.task_instances(dag, end_date_gte=start, end_date_lt=end,
                                              limit=100):
                if ti.get("start_date") and ti.get("end_date"):
                    found.append((f"{dag}.{ti['task_id']}", datetime.fromisoformat(ti["start_date"]),
                                  datetime.fromisoformat(ti["end_date"])))
        return sorted(found, key=lambda j: j[1])

    def objects(self, location: str) -> dict[str, tuple[int, int]]:
        """Return {"data": (files, bytes), "log": (files, bytes)} under an s3a:// location."""
        parsed = urllib.parse.urlparse(location)
        prefix = parsed.path.lstrip("/").rstrip("/") + "/"
        counts = {"data": [0, 0], "log": [0, 0]}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix):
            for obj in page.get("Contents", []):
                kind = "log" if "/_delta_log/" in obj["Key"] else "data"
                counts[kind][0] += 1
                counts[kind][1] += obj["Size"]
        return {k: (v[0], v[1]) for k, v in counts.items()}

    def task_log_bytes(self) -> int | None:
        """Return the size of the newest log of the always-running stream task."""
        logs = list((self.s.airflow_home / "logs" / "dag_id=iot_stream").glob("run_id=*/task_id=run_stream/*.log"))
        if not logs:
            return None
        return max(logs, key=lambda p: p.stat().st_mtime).stat().st_size

    def measure(self, w: Window, cpu_seconds: float) -> None:
        span = (w.end - w.start).total_seconds()
        p50, p99, rows = self.latency(w.start, w.end)
        parts = self.batches(w.start, w.end)
        f = w.figures
        f["rows visible"] = rows
        f["latency p50 s"], f["latency p99 s"] = p50, p99
        f["batches"] = len(parts["total"])
        f["batch median ms"] = _pct(parts["total"], 0.5)
        f["batch p95 ms"] = _pct(parts["total"], 0.95)
        for part in ("validate", "postgres", "bronze", "quarantine"):
            f[f"{part} median ms"] = _pct(parts[part], 0.5)
        f["stream cores"] = cpu_seconds / span
        for dag_task, started, ended in self.finished_jobs(w.start, w.end):
            _, during_p99, _ = self.latency(started, ended)
            w.jobs.append(f"{dag_task}: {(ended - started).total_seconds():.0f} s, stream p99 while it ran "
                          + (f"{during_p99:.2f} s" if during_p99 is not None else "n/a"))
            if dag_task.startswith("iot_aggregates"):
                f["aggregates run s"] = max(f.get("aggregates run s") or 0.0, (ended - started).total_seconds())
                if during_p99 is not None:
                    f["p99 during aggregates s"] = max(f.get("p99 during aggregates s") or 0.0, during_p99)
        for name, location in (("bronze", self.stream.bronze_path), ("quarantine", self.stream.quarantine_path)):
            counts = self.objects(location)
            f[f"{name} files"], f[f"{name} MB"] = counts["data"][0], counts["data"][1] / 1e6
            f[f"{name} log files"], f[f"{name} log MB"] = counts["log"][0], counts["log"][1] / 1e6
        checkpoint = self.objects(self.stream.checkpoint)
        f["checkpoint files"] = checkpoint["data"][0] + checkpoint["log"][0]
        f["checkpoint MB"] = (checkpoint["data"][1] + checkpoint["log"][1]) / 1e6
        size = self.task_log_bytes()
        f["stream task log MB"] = None if size is None else size / 1e6


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def print_window(i: int, w: Window) -> None:
    print(f"\nwindow {i + 1}: {w.start:%H:%M:%S} to {w.end:%H:%M:%S} UTC", flush=True)
    for name, value in w.figures.items():
        print(f"  {name:26} {_fmt(value)}")
    for job in w.jobs:
        print(f"  job {job}")
    sys.stdout.flush()


def print_ratios(windows: list[Window]) -> None:
    first, last = windows[0], windows[-1]
    print(f"\nlast window / first window ({len(windows)} windows)")
    for name, value in last.figures.items():
        before = first.figures.get(name)
        ratio = f"{value / before:.2f}" if value is not None and before not in (None, 0) else "-"
        print(f"  {name:26} {_fmt(before):>10} -> {_fmt(value):>10}   x {ratio}")


# ---- applying the settings the way a user would ----------------------------------------------

def apply_settings(overrides: dict[str, str]) -> None:
    """`stackctl up` with `overrides` in its environment, then a graceful restart of the
    stream's driver so that the next one reads them."""
    print(f"soak: stackctl up with {', '.join(f'{k}={v}' for k, v in overrides.items()) or '.env as it is'}",
          flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PRODUCER_RATE", "STREAM_TRIGGER_SECONDS")}
    subprocess.run([str(REPO_ROOT / "stack" / "bin" / "stackctl"), "up"], env={**env, **overrides}, check=True,
                   stdout=subprocess.DEVNULL)
    s = load_settings(Env.from_file(ENV_FILE))
    for proc in pipeline_drivers(s):
        if "python" in proc.name():
            proc.send_signal(signal.SIGTERM)  # finishes its micro-batch; Airflow starts the next driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=duration, default=duration("2h"), help="how long (default 2h)")
    parser.add_argument("--window", type=duration, default=duration("10m"), help="one line of figures per (10m)")
    parser.add_argument("--rate", type=positive, default=None,
                        help="events/s of the stack's producer (default: PRODUCER_RATE as configured)")
    parser.add_argument("--trigger-seconds", type=positive, default=None,
                        help="the stream's trigger interval (default: STREAM_TRIGGER_SECONDS as configured)")
    parser.add_argument("--sample", type=duration, default=duration("15s"), help="CPU sampling interval (15s)")
    args = parser.parse_args(argv)
    if args.window > args.duration:
        parser.error("--window must not be longer than --duration")

    env = Env.from_file(ENV_FILE)
    s = load_settings(env)
    if not Supervisor(s).running():
        print("soak: the stack is not running: start it with `make up`", file=sys.stderr)
        return 2
    overrides = {}
    if args.rate is not None and args.rate != s.producer_rate:
        overrides["PRODUCER_RATE"] = f"{args.rate:g}"
    if args.trigger_seconds is not None and args.trigger_seconds != env.get_float("STREAM_TRIGGER_SECONDS", 5.0):
        overrides["STREAM_TRIGGER_SECONDS"] = f"{args.trigger_seconds:g}"
    if overrides:
        apply_settings(overrides)
        env = Env({**env.as_dict(), **overrides})
        s = load_settings(env)
    probe = Probe(s, env)
    print(f"soak: {args.duration / 3600:.2f} h in windows of {args.window / 60:.0f} min; producer "
          f"{s.producer_rate:g} events/s, trigger {env.get_float('STREAM_TRIGGER_SECONDS', 5.0):g} s; "
          f"stream {probe.stream.query_name} on {probe.stream.topic}; host load {os.getloadavg()[0]:.2f}",
          flush=True)
    sampler = CpuSampler(s, args.sample)
    sampler.sample()
    sampler.start()
    windows: list[Window] = []
    deadline = time.monotonic() + args.duration
    try:
        cpu_before = sampler.seconds()
        start = datetime.now(UTC)
        while time.monotonic() < deadline - 1:
            left = min(args.window, deadline - time.monotonic())
            sampler.stop_event.wait(left)  # the window's length: this is what is measured
            end = datetime.now(UTC)
            cpu_now = sampler.seconds()
            w = Window(start, end)
            probe.measure(w, cpu_now - cpu_before)
            windows.append(w)
            print_window(len(windows) - 1, w)
            start, cpu_before = end, cpu_now
    except KeyboardInterrupt:
        print("\nsoak: interrupted", flush=True)
    finally:
        sampler.stop_event.set()
        if overrides:
            apply_settings({})
    if windows:
        print_ratios(windows)
        print(json.dumps({"windows": [{"start": w.start.isoformat(), "end": w.end.isoformat(), **w.figures,
                                       "jobs": w.jobs} for w in windows]}, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
