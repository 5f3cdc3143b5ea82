"""The pipeline's names and defaults, in one place.

`PipelineNames` is what one pipeline reads and writes under: its Kafka topic, its streaming
query's name and checkpoint, its two Delta tables and its PostgreSQL schema. It is built from
the environment once (`PipelineNames.from_env`) and overridden as a whole: a stream of your own
gives every name (`own`), a DAG run its params (`with_params`). The jobs, the DAG tasks, the
producer and the stack all take their defaults from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from common.env import Env

DEFAULT_TOPIC = "iot.sensor-readings"
DEFAULT_SCHEMA = "iot"
DEFAULT_QUERY_NAME = "sensor_readings"
DEFAULT_BUCKET = "lakehouse"

# The stack's producer: events/s, and the fraction of them replaced by a bad one.
DEFAULT_PRODUCER_RATE = 50.0
DEFAULT_PRODUCER_BAD_RATE = 0.005

# Records per chunk of jobs/reprocess.py: one PostgreSQL transaction each.
DEFAULT_REPROCESS_CHUNK_ROWS = 100_000
# At most: a chunk's CSV text is one string in the driver (~150 bytes a row), copied several times on
# its way to Python, two chunks at a time: 200,000-row chunks ran a 1 GB driver out of heap.
MAX_REPROCESS_CHUNK_ROWS = 100_000
# Each name and the command-line option that gives it.
NAME_OPTIONS = {
    "topic": "--topic",
    "checkpoint": "--checkpoint",
    "bronze_path": "--bronze-path",
    "quarantine_path": "--quarantine-path",
    "pg_schema": "--pg-schema",
    "query_name": "--query-name",
}
# The names jobs/reprocess.py takes (it writes no checkpoint).
REPROCESS_NAME_OPTIONS = {k: v for k, v in NAME_OPTIONS.items() if k != "checkpoint"}


def _given(values: Mapping[str, str | None]) -> dict[str, str]:
    """The names among `values` that are given: an empty value counts as not given (Airflow
    passes unset params as "")."""
    return {k: v.strip() for k, v in values.items() if k in NAME_OPTIONS and v and v.strip()}


@dataclass(frozen=True)
class PipelineNames:
    """The names one pipeline reads and writes under."""

    topic: str
    checkpoint: str
    bronze_path: str
    quarantine_path: str
    pg_schema: str
    query_name: str

    @classmethod
    def from_env(cls, env: Env) -> PipelineNames:
        """The running pipeline's names (KAFKA_TOPIC, STREAM_CHECKPOINT, BRONZE_PATH,
        QUARANTINE_PATH, PIPELINE_SCHEMA, STREAM_QUERY_NAME, under LAKEHOUSE_BUCKET)."""
        bucket = env.get("LAKEHOUSE_BUCKET", DEFAULT_BUCKET)
        return cls(
            topic=env.get("KAFKA_TOPIC", DEFAULT_TOPIC),
            checkpoint=env.get("STREAM_CHECKPOINT", f"s3a://{bucket}/checkpoints/{DEFAULT_QUERY_NAME}"),
            bronze_path=env.get("BRONZE_PATH", f"s3a://{bucket}/bronze/{DEFAULT_QUERY_NAME}"),
            quarantine_path=env.get("QUARANTINE_PATH", f"s3a://{bucket}/quarantine/{DEFAULT_QUERY_NAME}"),
            pg_schema=env.get("PIPELINE_SCHEMA", DEFAULT_SCHEMA),
            query_name=env.get("STREAM_QUERY_NAME", DEFAULT_QUERY_NAME),
        )

    def own(self, values: Mapping[str, str | None]) -> PipelineNames:
        """Return a stream's names from `values` (its command line): every one of NAME_OPTIONS
        given (a stream of your own), or none (these names). Raise ValueError naming the missing
        options when only some are given: falling back to the pipeline's value for the rest would
        make the run a second writer of the pipeline's tables, schema or maintenance requests."""
        names = _given(values)
        if names and len(names) < len(NAME_OPTIONS):
            missing = [option for key, option in NAME_OPTIONS.items() if key not in names]
            present = [option for key, option in NAME_OPTIONS.items() if key in names]
            raise ValueError(
                f"names of your own are all or nothing: {', '.join(present)} given, but not {', '.join(missing)}. "
                "Falling back to the pipeline's value for those would make this run a second writer of the "
                "pipeline's tables. Give every one of " + ", ".join(NAME_OPTIONS.values())
                + ", or none to run the pipeline's own stream.")
        return dataclasses.replace(self, **names)

    def with_params(self, params: Mapping[str, str | None]) -> PipelineNames:
        """Return these names with those a DAG run's params give (a param left empty keeps its
        name). For the tasks that read what a stream wrote; the stream itself takes `own`."""
        return dataclasses.replace(self, **_given(params))
