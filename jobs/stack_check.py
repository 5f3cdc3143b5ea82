"""Check that Spark reaches every store of the lakehouse with the project's configuration.

Usage:
    spark-submit jobs/stack_check.py --delta-path s3a://lakehouse/tmp/check \
        --topic some-topic --jdbc-table marts.some_table

Writes a 5-row Delta table to --delta-path and reads it back, reads every record of --topic
with the Kafka source (batch, earliest to latest), and appends the 5 rows to --jdbc-table
through JDBC. Prints one line `STACK_CHECK {json}` with what it saw. Used by the stack's
integration test; handy to diagnose a new environment.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.env import Env
from common.kafka import KafkaLogin
from jobs.session import build_spark, jdbc_options


def main(argv: list[str] | None = None) -> int:
    """Run the checks; return 0 (any failure raises and fails the job)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delta-path", required=True, help="s3a:// path of a scratch Delta table")
    parser.add_argument("--topic", required=True, help="Kafka topic to read from earliest to latest")
    parser.add_argument("--jdbc-table", required=True, help="PostgreSQL table to append 5 rows to")
    parser.add_argument("--kafka-role", choices=("stream", "admin"), default="stream",
                        help="whose Kafka login reads the topic (KAFKA_<ROLE>_USER/_PASSWORD; default stream)")
    args = parser.parse_args(argv)

    env = Env()
    spark = build_spark("stack-check", env)
    rows = [(i, f"row-{i}") for i in range(1, 6)]
    df = spark.createDataFrame(rows, "id int, name string")

    df.write.format("delta").mode("overwrite").save(args.delta_path)
    back = spark.read.format("delta").load(args.delta_path)
    delta_ids = sorted(r.id for r in back.collect())

    kafka = (spark.read.format("kafka")
             .options(**KafkaLogin.from_env(env, args.kafka_role).spark_options())
             .option("subscribe", args.topic)
             .option("startingOffsets", "earliest").option("endingOffsets", "latest")
             .load())
    values = sorted(r.value.decode() for r in kafka.selectExpr("value").collect())

    df.write.format("jdbc").options(**jdbc_options(env, args.jdbc_table)).mode("append").save()

    print("STACK_CHECK " + json.dumps({
        "delta_ids": delta_ids,
        "kafka_values": values,
        "session_time_zone": spark.conf.get("spark.sql.session.timeZone"),
        "spark_version": spark.version,
    }), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
