"""Task logic of the hourly aggregates DAG: wait until the stream has landed the interval in
bronze, then run jobs/aggregates.py over it."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.kafka import KafkaLogin

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
AGGREGATES_APPLICATION = str(REPO / "jobs" / "aggregates.py")


def aggregates_application_args() -> list[str]:
    """Return jobs/aggregates.py's arguments, templated on the run's data interval and params."""
    # --complete-before: the task runs after wait_for_stream, which checked that the stream has
    # committed every record stamped before the interval's end
    return ["--start", "{{ data_interval_start.isoformat() }}", "--end", "{{ data_interval_end.isoformat() }}",
            "--complete-before", "{{ data_interval_end.isoformat() }}", "--recompute", "{{ params.recompute }}",
            "--bronze-path", "{{ params.bronze_path }}", "--pg-schema", "{{ params.pg_schema }}"]


def offsets_still_needed(needed: dict[int, int], committed: dict[int, int]) -> dict[int, int]:
    """Return {partition: records} the stream has yet to commit before it reaches `needed`."""
    return {p: n - committed.get(p, 0) for p, n in sorted(needed.items()) if committed.get(p, 0) < n}


def offsets_before(login: KafkaLogin, topic: str, until: datetime) -> dict[int, int]:
    """Return, per partition, the offset of the first record stamped at or after `until`
    (or the log end when there is none yet): every record before it belongs before `until`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**login.client_kwargs(), client_id="iot-aggregates-wait", request_timeout_ms=10_000)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist on {login.bootstrap_servers} (or {login.user} "
                               "may not describe it)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        at = consumer.offsets_for_times({tp: int(until.timestamp() * 1000) for tp in tps})
        ends = consumer.end_offsets(tps)
        return {tp.partition: (at[tp].offset if at.get(tp) is not None else ends[tp]) for tp in tps}
    finally:
        consumer.close()
