"""Print the maximum sustained events/s of one producer process (acks=all, idempotence on).

Usage:
    stack/bin/stackctl python -m benchmarks.producer_throughput [--events 200000] [--repeats 3]

Needs the running stack (`make up`). Creates a topic of its own (6 partitions), deletes it
at the end. For each compression codec it runs the real producer loop (simulation, JSON,
kafka-python with acks=all and idempotence, delivery callbacks) unpaced for --events events
and reports events/s from the first send to the last acknowledgement, the median of
--repeats runs. It also reports the simulation alone (no Kafka) to show where time goes.
Target: at least 10,000 events/s from one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

from common.env import Env
from common.kafka import KafkaLogin
from producer.cli import Stopper, build_parser, run
from producer.simulation import Fleet
from producer.sinks import KafkaSink, MemorySink
from producer.stream import EventStream


def _args(events: int, compression: str) -> argparse.Namespace:
    return build_parser(Env()).parse_args([
        "--rate", "0", "--count", str(events), "--no-progress", "--seed", "1",
        "--compression", compression,
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one line per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--codecs", default="lz4,zstd,none", help="compression codecs to compare")
    opts = parser.parse_args(argv)
    if opts.events < 1 or opts.repeats < 1:
        parser.error("--events and --repeats must be at least 1")
    sys.setswitchinterval(0.05)  # as producer.cli.main does

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    env = Env()
    login = KafkaLogin.from_env(env, "admin")  # a topic of its own: only the admin may create and write it
    topic = f"bench-producer-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**login.client_kwargs())
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    try:
        sim = []
        for _ in range(opts.repeats):
            stream = EventStream(Fleet(50, 1, "bench"))
            sink = MemorySink()
            summary = run(_args(opts.events, "lz4"), sink, stream, Stopper())
            sim.append(summary["events_per_second"])
        print(f"simulation only (no Kafka):          {statistics.median(sim):>10,.0f} events/s")
        settings = None
        for codec in opts.codecs.split(","):
            rates = []
            for _ in range(opts.repeats):
                args = _args(opts.events, codec)
                sink = KafkaSink(login, topic, compression=None if codec == "none" else codec,
                                 linger_ms=args.linger_ms, batch_size=args.batch_size)
                settings = sink.settings
                stream = EventStream(Fleet(50, 1, f"bench-{codec}"))
                started = time.monotonic()
                summary = run(args, sink, stream, Stopper())
                sink.close()
                if summary["failed"] or summary["acked"] != opts.events:
                    print(f"run failed: {summary}", file=sys.stderr)
                    return 1
                rates.append(opts.events / (time.monotonic() - started))
            print(f"kafka acks=all idempotent {codec:>5}:     {statistics.median(rates):>10,.0f} events/s "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
        print(f"settings: {settings | {'compression_type': 'see rows'}}; "
              f"{opts.events:,} events x {opts.repeats} runs, 50 sensors, 6 partitions, one process")
    finally:
        admin.delete_topics([topic])
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
