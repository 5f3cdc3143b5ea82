"""Print the streaming job's figures on this machine, with the whole stack running.

Usage:
    stack/bin/stackctl python -m benchmarks.stream_pipeline [--rates 1000,2000,5000] [--seconds 60]
                          [--warmup 120] [--backlog 200000] [--sink-rows 100000] [--parts sink,catchup,latency]

Everything runs on names of its own (topic, PostgreSQL schema, S3 prefix), removed at the end.
1. Sink strategies on the same rows: ours (CSV via COPY into a staging table, INSERT ... ON
   CONFLICT DO NOTHING, progress row, one transaction) against the demo's (a plain Spark JDBC
   append into a table without keys), rows/s and the ratio.
2. Catch-up: the real job (spark-submit, availableNow, maxOffsetsPerTrigger 50000) run once
   on the empty topic (its start-up), then a backlog produced and drained; rows/s from the
   health rows, and CPU seconds per record beyond the start-up.
3. Latency: the real job running with a 1 s trigger while a producer sends at each rate for
   --seconds; produce-to-visible latency = ingested_at (the PostgreSQL transaction's time) -
   event_time (set at send), p50/p95/p99 over events after a --warmup (120 s: a fresh JVM
   runs the first minutes interpreted and compiling; 15 s made p50 at 2,000 events/s 25 s
   instead of 4.5 to 5.6 s). Then where each batch's time went, from the health rows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

from common.env import Env
from producer.simulation import Fleet
from producer.sinks import KafkaSink
from producer.stream import EventStream
from stack.settings import load_settings
from testkit.pipeline import Pipeline


def produce(settings, topic: str, rate: float, count: int, seed: int) -> int:
    """Send `count` valid readings at `rate` events/s (0 = unpaced); return how many were acked."""
    sink = KafkaSink(settings.kafka_login("admin"), topic)
    stream = EventStream(Fleet(50, seed, f"b{seed}"))
    start = time.monotonic()
    for i in range(count):
        if rate:
            due = start + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)  # pacing to the rate
        record = stream.next_record(time.time())
        sink.send(record.key, record.value)
    sink.flush(120)
    sink.close()
    return sink.acked


def sink_comparison(p: Pipeline, rows: int, batch_sizes: tuple[int, ...] = (1000, 10_000, 100_000)) -> None:
    """Ours vs a plain Spark JDBC append on the same curated rows, per micro-batch, in one run."""
    from pyspark.sql import functions as F

    from jobs.micro_batch import CSV_OPTIONS
    from jobs.session import build_spark, jdbc_options
    from jobs.sinks import PostgresSink
    from jobs.transform import CURATED_COLUMNS, Thresholds, curated, parse, validate

    def curated_csv_lines(curated_rows) -> list[str]:
        """Curated rows as the CSV lines our sink copies (built on the executors)."""
        line = F.to_csv(F.struct(*CURATED_COLUMNS), CSV_OPTIONS)
        return [row[0] for row in curated_rows.select(line).collect()]

    spark = build_spark("bench-sinks", Env(), master="local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    stream = EventStream(Fleet(50, 5, "sink"))
    values = [(None, stream.next_record(time.time()).value, "t", 0, i, 0) for i in range(rows)]
    kafka_like = spark.createDataFrame(values, "key binary, value binary, topic string, partition int, "
                                               "offset long, timestampType int")
    kafka_like = kafka_like.selectExpr("key", "value", "topic", "partition", "offset",
                                       "current_timestamp() as timestamp", "timestampType")
    all_rows = curated(validate(parse(kafka_like)), Thresholds()).cache()
    assert all_rows.count() == rows
    options = jdbc_options(Env(), f"{p.schema}.demo_readings")
    for size in batch_sizes:
        batches = [all_rows.where(f"kafka_offset >= {start} and kafka_offset < {start + size}").cache()
                   for start in range(0, min(rows, max(size, 20_000 if size < 20_000 else size)), size)]
        n = sum(b.count() for b in batches)
        p.query("truncate {schema}.sensor_readings, {schema}.sink_progress, {schema}.stream_health")
        sink = PostgresSink(p.stack_connect(), p.schema)
        lines_per_batch, ours_s = [], 0.0
        t = time.monotonic()
        for batch in batches:  # the CSV lines: in the stream they come out of the validation pass
            lines_per_batch.append(curated_csv_lines(batch))
        csv_s = time.monotonic() - t
        t = time.monotonic()
        for batch_id, lines in enumerate(lines_per_batch):  # ours: COPY + upsert + progress, one txn
            assert sink.write_batch("bench", batch_id, lines, _health(size)).inserted == len(lines)
        ours_s = time.monotonic() - t
        ours, ours_with_csv = n / ours_s, n / (ours_s + csv_s)
        sink.close()
        p.query("drop table if exists {schema}.demo_readings")
        t = time.monotonic()
        for batch in batches:  # the demo's: Spark JDBC append per micro-batch, table without key
            batch.write.format("jdbc").options(**options).mode("append").save()
        demo = n / (time.monotonic() - t)
        assert p.query("select count(*) from {schema}.demo_readings")[0][0] == n
        assert p.query("select count(*) from {schema}.sensor_readings")[0][0] == n
        print(f"sink, micro-batches of {size:,} ({len(batches)} batches, {n:,} rows): ours {ours:,.0f} rows/s "
              f"({ours_with_csv:,.0f} with a separate Spark job for the CSV lines), demo {demo:,.0f} rows/s; "
              f"ratio {ours / demo:.1f}x ({ours_with_csv / demo:.1f}x)")
        for b in batches:
            b.unpersist()
    spark.stop()


def _health(rows: int) -> dict:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return {"started_at": now, "rows_in": rows, "rows_valid": rows, "rows_quarantined": 0, "rule_failures": {},
            "validate_ms": 0, "postgres_started_at": now, "end_offsets": {}, "offsets_behind": 0}


def catch_up(p: Pipeline, settings, backlog: int) -> None:
    """Drain a backlog with the real job; print rows/s."""
    idle_cpu, _ = run_measured(p)  # the same job on the still empty topic: its start-up
    acked = produce(settings, p.topic, 0, backlog, 7)
    cpu, wall = run_measured(p)
    # The drain's batches (not the empty run's); its first batch runs on a cold JVM (interpreted
    # code, JIT compiling): the batches after it give the steady rate.
    rows, first, last, batches, warm_rows, warm_first = p.query(
        "select sum(rows_in), min(batch_started_at), max(batch_finished_at), count(*), "
        "sum(rows_in) filter (where batch_id > first_id), min(batch_started_at) filter (where batch_id > first_id) "
        "from (select *, min(batch_id) over () as first_id from {schema}.stream_health where rows_in > 0) drain")[0]
    rows, span = int(rows), (last - first).total_seconds()
    warm = f"{int(warm_rows) / (last - warm_first).total_seconds():,.0f} rows/s" if warm_rows else "n/a"
    print(f"catch-up: {acked:,} records in {batches} batches: {rows / span:,.0f} rows/s from first batch start to "
          f"last batch end, {warm} after the first batch ({rows / wall:,.0f} rows/s including the job's "
          "start-up); "
          f"the job used {cpu:,.0f} CPU seconds against {idle_cpu:,.0f} on the empty topic: "
          f"{(cpu - idle_cpu) / rows * 1e6:,.0f} µs of CPU per record")


def run_measured(p: Pipeline) -> tuple[float, float]:
    """Drain the pipeline's topic with the real job; return its CPU seconds and wall seconds.

    The CPU time is that of the job's whole process tree (spark-submit's JVM and the Python
    driver, each waited for by its parent): on a shared machine, steadier than the wall clock."""
    import resource

    t = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = p.run_once("--max-offsets-per-trigger", "50000", timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - t
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(1)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def latency(p: Pipeline, settings, rate: float, seconds: float, warmup: float) -> None:
    """Run the real job and a paced producer; print produce-to-visible percentiles."""
    import tempfile
    from pathlib import Path

    log = Path(tempfile.mkstemp(prefix="bench-stream-", suffix=".log")[1])
    driver = p.start(log, "--trigger-seconds", "1")
    try:
        # wait for the job to be up: its first (empty-topic) poll creates no rows, so send a
        # trickle until one is visible
        deadline = time.monotonic() + 180
        while not p.query("select count(*) from {schema}.sensor_readings")[0][0]:
            if time.monotonic() > deadline or driver.poll() is not None:
                raise SystemExit(f"the job did not start: {log.read_text()[-3000:]}")
            produce(settings, p.topic, 0, 10, 99)
        count = int(rate * (seconds + warmup))
        thread = threading.Thread(target=produce, args=(settings, p.topic, rate, count, int(rate)))
        started = time.time()
        thread.start()
        thread.join()
        # everything sent must become visible
        deadline = time.monotonic() + 300
        while p.query("select count(*) from {schema}.sensor_readings where event_time >= to_timestamp(%s)"
                      % (started + warmup))[0][0] < int(rate * seconds) - 1:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)  # polling the condition with a deadline
        pcts = p.query(
            "select percentile_cont(array[0.5, 0.95, 0.99]) within group "
            "(order by extract(epoch from ingested_at - event_time)), count(*) "
            f"from {{schema}}.sensor_readings where event_time >= to_timestamp({started + warmup})")[0]
        p50, p95, p99 = pcts[0]
        behind = p.query("select max(offsets_behind) from {schema}.stream_health")[0][0]
        print(f"latency at {rate:,.0f} events/s for {seconds:.0f} s ({pcts[1]:,} events after warm-up): "
              f"p50 {p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s; max offsets behind {behind}")
        print_batch_breakdown(p, started + warmup)
    finally:
        try:
            Pipeline.stop(driver, timeout=120)
        except subprocess.TimeoutExpired:
            Pipeline.kill9(driver)
        log.unlink(missing_ok=True)  # a failure quoted its tail above; nothing stays in /tmp


BREAKDOWN_COLUMNS = ("validate_ms", "postgres_ms", "bronze_ms", "quarantine_ms", "total_ms", "gap_ms")


def print_batch_breakdown(p: Pipeline, since: float) -> None:
    """Print where a micro-batch's time went (health rows after `since`): median and p95 of each
    phase, and the gap between one batch's end and the next one's start (Spark's own work:
    offsets, checkpoint, trigger)."""
    rows = p.query(
        "with b as (select *, extract(epoch from batch_started_at - lag(batch_finished_at) over "
        "(order by batch_id)) * 1000 as gap_ms from {schema}.stream_health) "
        "select count(*), avg(rows_in)::int, "
        + ", ".join(f"percentile_cont(0.5) within group (order by {c})::int, "
                    f"percentile_cont(0.95) within group (order by {c})::int"
                    for c in BREAKDOWN_COLUMNS)
        + f" from b where batch_started_at >= to_timestamp({since})")[0]
    phases = ", ".join(f"{c} {rows[2 + 2 * i]}/{rows[3 + 2 * i]}" for i, c in enumerate(BREAKDOWN_COLUMNS))
    print(f"  {rows[0]} batches of {rows[1]:,} rows on average; ms median/p95: {phases}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts; print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,2000,5000", help="latency runs, events/s")
    parser.add_argument("--seconds", type=float, default=60, help="measured seconds per latency run")
    parser.add_argument("--warmup", type=float, default=120,
                        help="seconds of each latency run not measured (the job's JVM warming up)")
    parser.add_argument("--backlog", type=int, default=200_000, help="records to drain for catch-up")
    parser.add_argument("--sink-rows", type=int, default=100_000, help="rows for the sink comparison")
    parser.add_argument("--parts", default="sink,catchup,latency", help="which parts to run")
    args = parser.parse_args(argv)
    settings = load_settings()
    parts = set(args.parts.split(","))
    print(f"streaming benchmark on {settings.pg_host}, 2 cores shared with the whole stack")
    if "sink" in parts:
        p = Pipeline(settings).create()
        try:
            sink_comparison(p, args.sink_rows)
        finally:
            p.destroy()
    if "catchup" in parts:
        p = Pipeline(settings, partitions=6).create()
        try:
            catch_up(p, settings, args.backlog)
        finally:
            p.destroy()
    if "latency" in parts:
        for rate in (float(r) for r in args.rates.split(",")):
            p = Pipeline(settings, partitions=6).create()
            try:
                latency(p, settings, rate, args.seconds, args.warmup)
            finally:
                p.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

