"""The hourly aggregates' transformations (jobs/aggregates.py runs them): DataFrame in,
DataFrame out, over bronze records read through the stream's own `parse` and `validate`.

    bronze ──bronze_as_kafka──▶ kafka rows ──parse, validate──▶ checked ──hourly_readings──▶
    readings ──counted_readings──▶ each event once, in its hour ──with_anomalies──▶ flagged ──▶
    hourly_city_aggregates, hourly_sensor_aggregates
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.transform import Thresholds, curated_columns, first_copy_rank

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

AGGREGATE_METRICS = ("readings", "temperature_min_c", "temperature_mean_c", "temperature_max_c", "temperature_p95_c",
                     "humidity_min_pct", "humidity_mean_pct", "humidity_max_pct", "humidity_p95_pct",
                     "ok_readings", "warning_readings", "critical_readings", "anomalies")
CITY_AGGREGATE_COLUMNS = ("hour_start_utc", "city", "readings", "sensors", *AGGREGATE_METRICS[1:])
SENSOR_AGGREGATE_COLUMNS = ("hour_start_utc", "sensor_id", "city", *AGGREGATE_METRICS)


def bronze_as_kafka(bronze_rows: DataFrame) -> DataFrame:
    """Return bronze rows shaped like the Kafka source's rows, so `parse` reads them unchanged."""
    from pyspark.sql import functions as F

    return bronze_rows.select("key", "value", "topic", "partition", "offset",
                              F.col("kafka_timestamp").alias("timestamp"))


def hourly_readings(checked: DataFrame, thresholds: Thresholds, lateness_hours: int) -> DataFrame:
    """Return the valid readings that count for their hour: classified like the stream does,
    each event_id once (its first copy by Kafka timestamp, partition, offset), and only if it
    reached Kafka before its hour ended plus `lateness_hours` (so an hour's final figures never
    depend on when they were computed)."""
    from pyspark.sql import functions as F

    valid = checked.where(F.size("failed_rules") == 0).select(*curated_columns(thresholds), "kafka_timestamp")
    return counted_readings(valid, lateness_hours)


def counted_readings(readings: DataFrame, lateness_hours: int) -> DataFrame:
    """Return the rows of `readings` (valid records: curated columns and kafka_timestamp) that
    count for their hour (see `hourly_readings`), with `hour_start_utc`."""
    from pyspark.sql import functions as F

    first_copy = first_copy_rank("event_id", "kafka_timestamp", "kafka_partition", "kafka_offset")
    counted = (readings.withColumn("_copy", first_copy)
               .where(F.col("_copy") == 1).drop("_copy")
               .withColumn("hour_start_utc", F.date_trunc("hour", "event_time")))
    deadline = F.col("hour_start_utc") + F.make_dt_interval(hours=F.lit(1 + lateness_hours))
    return counted.where(F.col("kafka_timestamp") < deadline)


def _metrics(anomaly: Column) -> list[Column]:
    """Return the aggregate columns shared by the city and the sensor grain (AGGREGATE_METRICS)."""
    from pyspark.sql import functions as F

    def mean(column: str) -> Column:
        # exact decimal arithmetic: the same rows give the same mean whatever the partitioning
        return F.round(F.avg(F.col(column).cast("decimal(12,4)")), 3)

    def count_of(status: str) -> Column:
        return F.count(F.when(F.col("status") == status, 1))

    return [
        F.count(F.lit(1)).alias("readings"),
        F.min("temperature_c").alias("temperature_min_c"),
        mean("temperature_c").alias("temperature_mean_c"),
        F.max("temperature_c").alias("temperature_max_c"),
        F.percentile("temperature_c", F.lit(0.95)).alias("temperature_p95_c"),
        F.min("humidity_pct").alias("humidity_min_pct"),
        mean("humidity_pct").alias("humidity_mean_pct"),
        F.max("humidity_pct").alias("humidity_max_pct"),
        F.percentile("humidity_pct", F.lit(0.95)).alias("humidity_p95_pct"),
        count_of("OK").alias("ok_readings"),
        count_of("WARNING").alias("warning_readings"),
        count_of("CRITICAL").alias("critical_readings"),
        F.count(F.when(anomaly, 1)).alias("anomalies"),
    ]


def with_anomalies(readings: DataFrame, anomaly_delta_c: float) -> DataFrame:
    """Return readings with `anomaly`: temperature more than `anomaly_delta_c` away from the
    median of its sensor's readings in the same hour (heat spikes, stuck-then-jump sensors)."""
    from pyspark.sql import functions as F

    medians = readings.groupBy("hour_start_utc", "sensor_id").agg(
        F.percentile("temperature_c", F.lit(0.5)).alias("_median_c"))
    return (readings.join(medians, ["hour_start_utc", "sensor_id"])
            .withColumn("anomaly", F.abs(F.col("temperature_c") - F.col("_median_c")) > anomaly_delta_c)
            .drop("_median_c"))


def hourly_city_aggregates(flagged: DataFrame) -> DataFrame:
    """Return one row per (hour, city) of readings flagged by `with_anomalies`."""
    from pyspark.sql import functions as F

    metrics = _metrics(F.col("anomaly"))
    return (flagged.groupBy("hour_start_utc", "city")
            .agg(metrics[0], F.count_distinct("sensor_id").alias("sensors"), *metrics[1:])
            .select(*CITY_AGGREGATE_COLUMNS))


def hourly_sensor_aggregates(flagged: DataFrame) -> DataFrame:
    """Return one row per (hour, sensor) of readings flagged by `with_anomalies`."""
    from pyspark.sql import functions as F

    # a sensor belongs to one city; min() keeps the result deterministic should one ever move
    return (flagged.groupBy("hour_start_utc", "sensor_id")
            .agg(F.min("city").alias("city"), *_metrics(F.col("anomaly")))
            .select(*SENSOR_AGGREGATE_COLUMNS))
