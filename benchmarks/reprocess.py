"""Print the rebuild rate of jobs/reprocess.py on this machine, with the whole stack running.

Usage:
    stack/bin/stackctl python -m benchmarks.reprocess [--records 1000000] [--chunk-rows 100000] [--runs 3]

On names of its own (topic, PostgreSQL schema, S3 prefix), removed at the end:
1. --records readings (1 % bad) are sent to a topic of its own, and the real stream job
   (spark-submit, availableNow) lands them in bronze, curated and quarantine;
2. bronze is compacted (OPTIMIZE: what the daily retention does to the pipeline's bronze);
3. curated is truncated, and the real reprocess job (spark-submit) rebuilds it.
Prints rows/s two ways: the job's own (from its first read of bronze to its last commit, as it logs
it) and the whole spark-submit's (JVM start included); and checks the rebuild gave back every
curated row.

A run has a fixed cost whatever its size (about 11 s on 2 cores: the JVM's classes and JIT,
Delta's snapshot, Spark's first plans), so a small range rebuilds at a lower rate: the default,
1,000,000 records, is about five and a half hours of the pipeline at 50 events/s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from common.env import Env
from common.pipeline import DEFAULT_REPROCESS_CHUNK_ROWS
from producer.simulation import Fleet
from producer.stream import EventStream
from stack.settings import load_settings
from testkit.pipeline import Pipeline, send_stamped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reprocess", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="records to land and rebuild (default 1000000)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_REPROCESS_CHUNK_ROWS,
                        help=f"the job's --chunk-rows (default {DEFAULT_REPROCESS_CHUNK_ROWS})")
    parser.add_argument("--runs", type=int, default=3, help="rebuilds of the same bronze, one after another "
                                                            "(default 3: a shared 2-core machine is noisy)")
    args = parser.parse_args(argv)
    if args.records < 1:
        parser.error("--records must be >= 1")
    if args.chunk_rows < 1:
        parser.error("--chunk-rows must be >= 1")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    p = Pipeline(load_settings()).create()
    try:
        return run(p, args.records, args.chunk_rows, args.runs)
    finally:
        p.destroy()


def run(p: Pipeline, records: int, chunk_rows: int, runs: int) -> int:
    stream = EventStream(Fleet(50, 9, "rb"), bad_rate=0.01)
    now = time.time()
    t = time.monotonic()
    batch: list = []
    for i in range(records):
        r = stream.next_record(now - records * 0.01 + i * 0.01)
        batch.append((r.key, r.value, now - records * 0.01 + i * 0.01))
        if len(batch) == 50_000:
            send_stamped(p, batch)
            batch = []
    if batch:
        send_stamped(p, batch)
    print(f"sent {records} records in {time.monotonic() - t:.0f} s", flush=True)
    t = time.monotonic()
    landed = p.run_once("--max-offsets-per-trigger", "200000", timeout=3600)
    if landed.returncode:
        print(landed.stderr[-4000:], file=sys.stderr)
        return 1
    print(f"the stream landed them in {time.monotonic() - t:.0f} s", flush=True)

    from jobs.session import build_spark

    spark = build_spark("bench-reprocess", Env(), master="local[2]")
    try:
        spark.sparkContext.setLogLevel("ERROR")
        from delta.tables import DeltaTable

        DeltaTable.forPath(spark, p.path("bronze")).optimize().executeCompaction()
        files = DeltaTable.forPath(spark, p.path("bronze")).detail().collect()[0].numFiles
    finally:
        spark.stop()
    print(f"bronze compacted: {files} files", flush=True)
    before = p.query("select count(*) from {schema}.sensor_readings")[0][0]
    ok = True
    for attempt in range(1, runs + 1):
        ok = rebuild(p, chunk_rows, before, attempt) and ok
    return 0 if ok else 1


def rebuild(p: Pipeline, chunk_rows: int, before: int, attempt: int) -> bool:
    """Truncate curated, rebuild it with the real job; print the figures; return whether every
    row came back."""
    p.query("truncate {schema}.sensor_readings")
    args = p.submit_args("reprocess", "--topic", p.topic, "--pg-schema", p.schema, "--bronze-path", p.path("bronze"),
                         "--quarantine-path", p.path("quarantine"), "--query-name", p.name,
                         "--chunk-rows", str(chunk_rows))
    t = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    whole = time.monotonic() - t
    output = result.stdout + result.stderr
    if result.returncode:
        print(output[-4000:], file=sys.stderr)
        return False
    print(f"rebuild {attempt}:")
    for line in output.splitlines():  # the job's own progress: where its time went
        if " jobs.reprocess " in line:
            print("  " + line)
    after = p.query("select count(*) from {schema}.sensor_readings")[0][0]
    done = re.search(r"done: (\d+) rows read in ([\d.]+) s \((\d+) rows/s", output)
    read, seconds = int(done.group(1)), float(done.group(2))
    print(f"  {read} records read, {after} curated rows (before: {before}) {'OK' if after == before else 'MISMATCH'}")
    print(f"  rate, the job's own (from its first read of bronze to its last commit): {read / seconds:,.0f} rows/s "
          f"({seconds:.1f} s)")
    print(f"  rate, the whole spark-submit (JVM start included): {read / whole:,.0f} rows/s ({whole:.1f} s)",
          flush=True)
    return after == before


if __name__ == "__main__":
    sys.exit(main())
