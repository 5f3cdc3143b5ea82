"""Do once what every driver of the project does first, so that the JVM can archive its classes.

Usage (`make up` runs it when the archive is missing or out of date; stack/class_archive.py):
    spark-submit jobs/class_archive.py --path s3a://lakehouse/_class-archive/<run>

A Spark driver spends most of its first seconds loading and verifying classes from the jars
(Spark's, Delta's, the Kafka client's, S3A's and the AWS SDK's). Run with the JVM option
-XX:ArchiveClassesAtExit, this job leaves an archive of every class it loaded, which later
drivers map instead (stack/bin/spark/spark-submit). So it does what a driver does first: a
SparkSession; the Kafka source as a stream from the end of the pipeline's topic (it reads no
record) with a checkpoint; the parsing and rules over a few records of its own, bronze,
quarantine and curated rows of them; two Delta tables written, committed and read back. Only
under --path, which it removes at the end; it writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from common.env import Env
from common.kafka import STREAM_GROUP_PREFIX
from jobs.micro_batch import curated_csv_column
from jobs.session import build_spark
from jobs.stream import KAFKA_FETCH_MAX_WAIT_MS, StreamSettings
from jobs.transform import curated, parse, quarantine, to_bronze, validate

KAFKA_SCHEMA = ("key binary, value binary, topic string, partition int, offset long, timestamp timestamp, "
                "timestampType int")


def sample_records(topic: str) -> list[tuple]:
    """Three Kafka rows: a valid reading, one out of range, one that is not JSON."""
    now = datetime.now(UTC)
    event = {"event_id": "00000000-0000-4000-8000-000000000001", "sensor_id": "archive-s0001", "city": "Recife",
             "event_time": now.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "schema_version": 1, "seq": 1,
             "temperature_c": 21.5, "humidity_pct": 50.0}
    values = [json.dumps(event), json.dumps({**event, "temperature_c": 99.0}), "not json"]
    return [(b"archive-s0001", v.encode(), topic, 0, i, now, 0) for i, v in enumerate(values)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark-submit jobs/class_archive.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--path", required=True, help="an s3a:// folder of its own, removed at the end")
    args = parser.parse_args(argv)
    if not args.path.startswith("s3a://") or args.path.rstrip("/").count("/") < 3:
        parser.error(f"--path must be an s3a://bucket/folder of its own, got {args.path!r}")

    env = Env()
    settings = StreamSettings.from_env(env)
    spark = build_spark("iot-class-archive", env)
    try:
        rows = spark.createDataFrame(sample_records(settings.names.topic), KAFKA_SCHEMA)
        checked = validate(parse(rows))
        to_bronze(rows).write.format("delta").mode("append").save(f"{args.path}/bronze")
        quarantine(checked).write.format("delta").mode("append").save(f"{args.path}/quarantine")
        thresholds = settings.thresholds
        lines = checked.select(curated_csv_column(thresholds).alias("line")).where("line is not null").collect()
        kept = curated(checked, thresholds).count()
        bronze = spark.read.format("delta").load(f"{args.path}/bronze").count()
        quarantined = spark.read.format("delta").load(f"{args.path}/quarantine").count()

        # the stream's source and checkpoint, from the topic's end: no record is read
        query = (spark.readStream.format("kafka")
                 .options(**settings.kafka.spark_options())
                 .option("groupIdPrefix", f"{STREAM_GROUP_PREFIX}-class-archive")
                 .option("subscribe", settings.names.topic)
                 .option("kafka.fetch.max.wait.ms", str(KAFKA_FETCH_MAX_WAIT_MS))
                 .option("startingOffsets", "latest")
                 .load()
                 .writeStream.trigger(availableNow=True)
                 .option("checkpointLocation", f"{args.path}/checkpoint")
                 .foreachBatch(lambda batch, _id: batch.count())
                 .start())
        query.awaitTermination()
        print("CLASS_ARCHIVE " + json.dumps({"bronze": bronze, "quarantine": quarantined, "curated": kept,
                                             "curated_lines": len(lines)}), flush=True)
    finally:
        jvm = spark.sparkContext._jvm
        folder = jvm.org.apache.hadoop.fs.Path(args.path)
        folder.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(folder, True)
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
