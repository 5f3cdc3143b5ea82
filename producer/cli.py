"""Command line of the sensor simulator.

    python -m producer --rate 500 --duration 60            # 500 readings/s for a minute
    python -m producer --count 10000 --seed 7 --bad-rate 0.05
    python -m producer --rate 0 --count 200000             # as fast as possible
    python -m producer --start-time 2026-11-20T00:00:00Z --rate 10 --count 36000
                                                           # 1 h of history, sent unpaced
    python -m producer --dry-run --count 5 --seed 1        # print events, no Kafka
    python -m producer --describe-fleet --sensors 8        # the sensors' metadata (Faker)

Exit status: 0 when every record was acknowledged, 1 when any delivery failed or a flush
timed out, 2 for bad arguments or an unreachable broker. SIGTERM and SIGINT stop the loop,
flush what is queued, then exit with that status.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common.env import Env, MissingSetting
from common.kafka import KafkaLogin
from common.pipeline import DEFAULT_PRODUCER_BAD_RATE, DEFAULT_PRODUCER_RATE, PipelineNames
from producer.bad_events import BAD_CATEGORIES
from producer.simulation import FLEET_ID, AnomalyRates, Fleet
from producer.sinks import EventSink, KafkaSink, SinkUnavailable, StdoutSink
from producer.stream import VALID, EventStream

log = logging.getLogger("producer")


# Upper bounds that no real run reaches: beyond them a value is a typo, and some (a fleet of a
# billion sensors) would exhaust memory before anything is sent.
MAX_RATE = 1_000_000  # events/s
MAX_DURATION = 366 * 86_400  # seconds
MAX_COUNT = 10_000_000_000
MAX_SENSORS = 100_000
SEED_RANGE = (-(2**63), 2**63 - 1)
START_TIME_RANGE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def _bounded(name: str, kind: type, low: float, high: float | None = None):
    """Return an argparse type parsing `kind` (int or float) within [low, high], naming the
    option; nan and infinities are refused."""
    word = "a whole number" if kind is int else "a number"

    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {word}, got {raw!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {raw!r}")
        if value < low or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"within [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{name} must be {bounds}, got {raw!r}")
        return value
    return parse


def _non_negative_float(name: str, high: float | None = None):
    return _bounded(name, float, 0, high)


def _fraction(name: str):
    return _bounded(name, float, 0, 1)


def _positive_int(name: str, high: int | None = None):
    return _bounded(name, int, 1, high)


def _categories(raw: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in raw.split(",") if c.strip())
    unknown = [c for c in names if c not in BAD_CATEGORIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--bad-categories: unknown {unknown or raw!r}; choose from {', '.join(BAD_CATEGORIES)}")
    return names


def _start_time(raw: str) -> float:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--start-time must be ISO-8601 like 2026-11-20T00:00:00Z, got {raw!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--start-time needs a UTC offset (e.g. Z), got {raw!r}")
    low, high = START_TIME_RANGE
    if not low <= parsed < high:
        raise argparse.ArgumentTypeError(f"--start-time must be from {low.year} to before {high.year}, got {raw!r}")
    return parsed.astimezone(UTC).timestamp()


def build_parser(env: Env) -> argparse.ArgumentParser:
    """Return the argument parser; defaults come from the environment / .env."""
    p = argparse.ArgumentParser(
        prog="python -m producer",
        description="Simulate a fleet of IoT sensors and publish their readings (event "
                    "contract v1, JSON, key = sensor_id) to Kafka with acks=all and idempotence.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    g = p.add_argument_group("how much")
    # defaults from the environment are strings, so argparse checks them with the same type
    g.add_argument("--rate", type=_non_negative_float("--rate", MAX_RATE),
                   default=env.get("PRODUCER_RATE", f"{DEFAULT_PRODUCER_RATE:g}"),
                   help="events per second, evenly paced; 0 = as fast as possible "
                        f"(default: PRODUCER_RATE or {DEFAULT_PRODUCER_RATE:g})")
    stop = g.add_mutually_exclusive_group()
    stop.add_argument("--count", type=_positive_int("--count", MAX_COUNT),
                      help="stop after this many events (valid + bad); shows a progress bar")
    stop.add_argument("--duration", type=_non_negative_float("--duration", MAX_DURATION),
                      help="stop after this many seconds; shows a progress bar")
    g.add_argument("--start-time", type=_start_time, metavar="ISO8601",
                   help="simulate history: event_time = START + i/rate (needs --rate > 0), "
                        "sent as fast as possible instead of paced")

    g = p.add_argument_group("the fleet")
    g.add_argument("--sensors", type=_positive_int("--sensors", MAX_SENSORS),
                   default=env.get("PRODUCER_SENSORS", "50"),
                   help="fleet size; sensors are spread over the 8 cities (default: PRODUCER_SENSORS or 50)")
    g.add_argument("--seed", type=_bounded("--seed", int, *SEED_RANGE), default=None,
                   help="seed of every random choice: the same seed gives the same events "
                        "(default: random)")
    g.add_argument("--fleet-id", default=None,
                   help="prefix of this process's sensor ids (<fleet-id>-s0000...). Several "
                        "producers need distinct ids so (sensor_id, seq) never collides "
                        "(default: f<seed> with --seed, else random)")
    g.add_argument("--spike-rate", type=_fraction("--spike-rate"), default=0.001,
                   help="per-reading chance a heat spike starts (+12..22 °C, 1-5 readings)")
    g.add_argument("--stuck-rate", type=_fraction("--stuck-rate"), default=0.0005,
                   help="per-reading chance a sensor gets stuck (repeats 10-60 readings)")
    g.add_argument("--dropout-rate", type=_fraction("--dropout-rate"), default=0.0005,
                   help="per-reading chance a sensor drops out for 10-120 turns")
    g.add_argument("--describe-fleet", action="store_true",
                   help="print each sensor's metadata (serial, model, install date, "
                        "coordinates) as JSON lines and exit")

    g = p.add_argument_group("bad events (to exercise the pipeline)")
    g.add_argument("--bad-rate", type=_fraction("--bad-rate"),
                   default=env.get("PRODUCER_BAD_RATE", f"{DEFAULT_PRODUCER_BAD_RATE:g}"),
                   help="fraction of events replaced by a bad one "
                        f"(default: PRODUCER_BAD_RATE or {DEFAULT_PRODUCER_BAD_RATE:g})")
    g.add_argument("--bad-categories", type=_categories, default=BAD_CATEGORIES, metavar="LIST",
                   help="comma-separated categories to draw from (default: all): "
                        + ", ".join(BAD_CATEGORIES))

    g = p.add_argument_group("Kafka")
    g.add_argument("--topic", default=PipelineNames.from_env(env).topic,
                   help="topic (default: KAFKA_TOPIC or iot.sensor-readings)")
    g.add_argument("--bootstrap-servers", default=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                   help="host:port[,...] (default: KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092). It logs in with "
                        "SASL/SCRAM-SHA-512 as KAFKA_PRODUCER_USER, password KAFKA_PRODUCER_PASSWORD (.env; "
                        "never an option: the command line is visible to every local user)")
    g.add_argument("--linger-ms", type=_bounded("--linger-ms", int, 0, 60_000), default=100,
                   help="producer linger.ms (default 100: fuller batches, at most 0.1 s added latency)")
    g.add_argument("--batch-size", type=_bounded("--batch-size", int, 1, 64 * 1024 * 1024), default=1024 * 1024,
                   help="producer batch.size in bytes (default 1 MiB)")
    g.add_argument("--compression", choices=("zstd", "lz4", "gzip", "none"), default="zstd",
                   help="compression codec (default zstd: the fastest here, see the benchmark)")
    g.add_argument("--flush-timeout", type=_non_negative_float("--flush-timeout", 3600), default=60.0,
                   help="seconds to wait for queued records at exit (default 60)")
    g.add_argument("--dry-run", action="store_true",
                   help="write events to stdout, one per line, instead of Kafka")

    g = p.add_argument_group("output")
    g.add_argument("--stats-interval", type=_non_negative_float("--stats-interval", 86_400), default=10.0,
                   help="seconds between one-line stats logs of unbounded runs (default 10)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar for bounded runs")
    g.add_argument("--heartbeat-file", type=Path, metavar="PATH",
                   help="touch PATH at each stats interval in which Kafka acknowledged new records, "
                        "for a container health check (the file's age says whether delivery works)")
    return p


class Stopper:
    """Turns SIGTERM/SIGINT into a flag the send loop checks."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.signal = signum

    def install(self) -> None:
        """Handle SIGTERM and SIGINT."""
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run sends: how many records or for how long, how fast, stamped when."""

    count: int | None
    duration: float | None
    rate: float
    start_time: float | None  # simulated history: record i is stamped start_time + i / rate

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        return cls(args.count, args.duration, args.rate, args.start_time)

    @functools.cached_property
    def bounded(self) -> bool:
        return self.count is not None or self.duration is not None

    @functools.cached_property
    def interval(self) -> float:
        """Seconds between two records; 0 = as fast as possible."""
        return 1.0 / self.rate if self.rate > 0 else 0.0

    @functools.cached_property
    def paced(self) -> bool:
        """Whether records are sent at --rate (simulated history is sent unpaced)."""
        return bool(self.interval) and self.start_time is None

    def finished(self, sent: int, elapsed: float) -> bool:
        return ((self.count is not None and sent >= self.count)
                or (self.duration is not None and elapsed >= self.duration))

    def timestamp(self, i: int, wall0: float, elapsed: float) -> float:
        """The event time of record i."""
        return self.start_time + i * self.interval if self.start_time is not None else wall0 + elapsed


class Pacer:
    """Holds record i back until its time at the plan's rate."""

    def __init__(self, plan: Plan) -> None:
        self.interval = plan.interval if plan.paced else 0.0

    def wait(self, i: int, elapsed: float) -> bool:
        """Sleep until record i is due; return False if it was not due yet (check again)."""
        due = i * self.interval
        if self.interval and due > elapsed + 0.002:
            time.sleep(due - elapsed)  # pacing to --rate, not waiting for a condition
            return False
        return True


SECONDS_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}]"


class Progress:
    """A progress bar of whole events (--count) or whole seconds (--duration) on stderr."""

    def __init__(self, plan: Plan, enabled: bool) -> None:
        self.plan = plan
        self.shown = 0
        self.bar = None
        if enabled and plan.bounded:
            from tqdm import tqdm

            by_count = plan.count is not None
            self.bar = tqdm(total=plan.count if by_count else math.ceil(plan.duration), mininterval=1.0,
                            unit=" ev", file=sys.stderr, dynamic_ncols=True,
                            # a run of --duration: seconds done of seconds planned, no "s/s" rate
                            bar_format=None if by_count else SECONDS_BAR)

    def _done(self, sent: int, elapsed: float) -> int:
        return sent if self.plan.count is not None else int(min(elapsed, self.plan.duration))

    def update(self, sent: int, elapsed: float) -> None:
        if self.bar is not None and (sent & 1023) == 0:
            self._advance(self._done(sent, elapsed))

    def _advance(self, done: int) -> None:
        if done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def close(self, sent: int, elapsed: float, finished: bool) -> None:
        if self.bar is not None:
            # a run that reached its duration shows it whole, not the second it began
            self._advance(self.bar.total if finished and self.plan.count is None else self._done(sent, elapsed))
            self.bar.close()


class StatsLog:
    """For an unbounded run: a line of figures every --stats-interval s, and the heartbeat file
    touched when Kafka acknowledged records since the last line."""

    def __init__(self, every_s: float, heartbeat: Path | None, t0: float) -> None:
        self.every_s = every_s
        self.heartbeat = heartbeat
        self.last, self.last_sent, self.last_acked = t0, 0, 0

    def maybe_log(self, now: float, sink: EventSink, stream: EventStream) -> None:
        if not self.every_s or now - self.last < self.every_s:
            return
        log.info("sent=%d (%.0f/s) acked=%d failed=%d bad=%d", sink.sent,
                 (sink.sent - self.last_sent) / (now - self.last), sink.acked, sink.failed,
                 sum(v for k, v in stream.counts.items() if k != VALID))
        self.last, self.last_sent = now, sink.sent
        if self.heartbeat is not None and sink.acked > self.last_acked:
            self.heartbeat.touch()
            self.last_acked = sink.acked


def run(args: argparse.Namespace, sink: EventSink, stream: EventStream, stopper: Stopper) -> dict:
    """Send records until the count, duration or a signal stops it; return the summary."""
    plan = Plan.from_args(args)
    pacer = Pacer(plan)
    progress = Progress(plan, enabled=not args.no_progress and not args.dry_run)
    t0 = time.monotonic()
    wall0 = time.time()
    stats = None if plan.bounded else StatsLog(args.stats_interval, args.heartbeat_file, t0)
    i = 0
    fatal = None
    finished = False
    while stopper.signal is None:
        now = time.monotonic()
        elapsed = now - t0
        if plan.finished(i, elapsed):
            finished = True
            break
        if not pacer.wait(i, elapsed):
            continue
        record = stream.next_record(plan.timestamp(i, wall0, elapsed))
        try:
            sink.send(record.key, record.value)
        except SinkUnavailable as exc:
            log.error("stopping: %s", exc)
            fatal = str(exc)
            break
        i += 1
        progress.update(i, elapsed)
        if stats is not None:
            stats.maybe_log(now, sink, stream)
    progress.close(i, time.monotonic() - t0, finished)
    send_s = time.monotonic() - t0
    flushed = sink.flush(args.flush_timeout)
    total_s = time.monotonic() - t0
    return summary(sink, stream, stopper, args, fatal, flushed, send_s, total_s)


def write_line(text: str) -> None:
    """Write `text` as one whole line to stderr. kafka-python's I/O thread may be logging there
    meanwhile (a batch split and retried): print writes a text and its newline apart, and a log
    line landed between them (PRODUCER_SUMMARY {...}<log line>). One write, under the log
    handlers' locks, cannot be split."""
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.acquire()
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    finally:
        for handler in reversed(handlers):
            handler.release()


def summary(sink: EventSink, stream: EventStream, stopper: Stopper, args: argparse.Namespace, fatal: str | None,
            flushed: bool, send_s: float, total_s: float) -> dict:
    """The run's figures, printed as PRODUCER_SUMMARY."""
    return {
        "sent": sink.sent, "acked": sink.acked, "failed": sink.failed, "flushed": flushed,
        "unconfirmed": sink.sent - sink.acked - sink.failed,
        "valid": stream.counts.get(VALID, 0),
        "bad": {c: stream.counts.get(c, 0) for c in BAD_CATEGORIES if stream.counts.get(c, 0)},
        "anomalies": vars(stream.fleet.counts),
        "signal": signal.Signals(stopper.signal).name if stopper.signal else None,
        "send_seconds": round(send_s, 3), "total_seconds": round(total_s, 3),
        "events_per_second": round(sink.sent / total_s, 1) if total_s > 0 else None,
        "fleet_id": stream.fleet.fleet_id, "topic": None if args.dry_run else args.topic,
        "fatal": fatal,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the simulator; return the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python warns "Exchanging credentials in the clear" for every SASL login; SCRAM never
    # sends the password, only a proof of it
    logging.getLogger("kafka.net.sasl").setLevel(logging.ERROR)
    env = Env()
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.start_time is not None and args.rate <= 0:
        parser.error("--start-time needs --rate > 0 (it spaces the simulated event times)")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    if args.fleet_id is not None and not FLEET_ID.fullmatch(args.fleet_id):
        parser.error(f"argument --fleet-id: must be 1-32 of [A-Za-z0-9_-], got {args.fleet_id!r}")
    fleet_id = args.fleet_id or (f"f{args.seed}" if args.seed is not None else f"f{os.urandom(3).hex()}")
    fleet = Fleet(size=args.sensors, seed=seed, fleet_id=fleet_id,
                  anomalies=AnomalyRates(args.spike_rate, args.stuck_rate, args.dropout_rate))
    if args.describe_fleet:
        for meta in fleet.metadata():
            print(json.dumps(vars(meta), ensure_ascii=False))
        return 0
    stream = EventStream(fleet, args.bad_rate, args.bad_categories)
    sink: EventSink
    if args.dry_run:
        sink = StdoutSink()
    else:
        try:
            login = dataclasses.replace(KafkaLogin.from_env(env, "producer"), bootstrap_servers=args.bootstrap_servers)
        except MissingSetting as exc:
            print(f"producer: {exc}", file=sys.stderr)
            return 2
        try:
            sink = KafkaSink(login, args.topic, linger_ms=args.linger_ms,
                             batch_size=args.batch_size,
                             compression=None if args.compression == "none" else args.compression)
        except ConnectionError as exc:
            print(f"producer: {exc}", file=sys.stderr)
            return 2
    # kafka-python's sender thread and this loop share the GIL. With the default 5 ms switch
    # interval they hand it back and forth so often that throughput drops by a third
    # (benchmarks/producer_throughput.py: 7.9k vs 14.7k events/s); 50 ms keeps both busy.
    sys.setswitchinterval(0.05)
    stopper = Stopper()
    stopper.install()
    log.info("producing to %s: fleet %s, %d sensors, seed %d, rate %s/s, bad rate %s",
             "stdout" if args.dry_run else args.topic, fleet_id, args.sensors, seed,
             args.rate or "max", args.bad_rate)
    try:
        summary = run(args, sink, stream, stopper)
    finally:
        sink.close()
    write_line("PRODUCER_SUMMARY " + json.dumps(summary, sort_keys=True))
    if summary["failed"] or summary["unconfirmed"] or not summary["flushed"] or summary["fatal"]:
        log.error("%d of %d records failed delivery, %d unconfirmed (flushed=%s)", summary["failed"],
                  summary["sent"], summary["unconfirmed"], summary["flushed"])
        return 1
    return 0
