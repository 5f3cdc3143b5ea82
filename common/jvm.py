"""The JVM options of the project's Spark drivers: every driver's, the always-running
stream's (which the DAG's operator gives on its spark-submit line) and the batch jobs' (in
spark-defaults.conf). Here, not in jobs/, because the orchestration needs the stream's too.
"""

from __future__ import annotations

from common.env import Env

DRIVER_JAVA_OPTIONS = "-Duser.timezone=UTC"
# C1 only; with it the JVM reserves 48 MB for compiled code (240 MB when tiered): the stream's
# driver filled that in minutes, and the code cache sweeper then took more CPU than the batches
DEFAULT_STREAM_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"
# Every other driver (the batch jobs, ad hoc runs) keeps C2 but sends a method to it only after
# ten times the JVM's default number of calls and loops: in a batch JVM that lives a minute, C2
# spent 45 of the hourly aggregates' 100 CPU seconds compiling code that ran a few thousand
# times (Spark's code generator, class loading, task serialization); now the per-row code gets
# C2 and little else (aggregates 61 -> 52 s; 100 times the defaults: 55 s, more C1 time in tasks)
DEFAULT_BATCH_JAVA_OPTIONS = ("-XX:Tier4InvocationThreshold=50000 -XX:Tier4MinInvocationThreshold=6000 "
                              "-XX:Tier4CompileThreshold=150000 -XX:Tier4BackEdgeThreshold=400000")

def batch_driver_java_options(env: Env) -> str:
    """Return spark.driver.extraJavaOptions of every driver but the stream's (spark-defaults):
    the drivers' options and BATCH_DRIVER_JAVA_OPTIONS (default DEFAULT_BATCH_JAVA_OPTIONS)."""
    return " ".join([DRIVER_JAVA_OPTIONS, *env.get("BATCH_DRIVER_JAVA_OPTIONS", DEFAULT_BATCH_JAVA_OPTIONS).split()])


def stream_driver_java_options(env: Env) -> str:
    """Return spark.driver.extraJavaOptions for the stream's driver: the drivers' options and
    STREAM_DRIVER_JAVA_OPTIONS (default: the JIT at its first compiler, C1; .env.example says
    why). Given on the stream's spark-submit command line (orchestration/operators.py), not in
    spark-defaults.conf: the batch jobs keep C2 (batch_driver_java_options), which ran the
    hourly aggregates 30 % faster than C1 did."""
    return " ".join([DRIVER_JAVA_OPTIONS, *env.get("STREAM_DRIVER_JAVA_OPTIONS", DEFAULT_STREAM_JAVA_OPTIONS).split()])
