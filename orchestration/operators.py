"""SparkSubmitOperator for long-running PySpark drivers that must stop cleanly.

The provider's on_kill SIGKILLs spark-submit, and Airflow's task supervisor signals the task's
whole process group: both kill a micro-batch halfway. This operator starts spark-submit in a
session of its own (out of the supervisor's reach) and, on kill (the task marked failed or
success in the UI, or a timeout), sends SIGTERM to the PySpark driver process only. The driver
(jobs/stream.py) lets the running micro-batch finish, stops the query and exits; spark-submit
then exits on its own. If it is still running after `stop_timeout`, the provider's kill runs.

The job gets only what it needs (job_environment): none of Airflow's own variables (its
metadata database URI, Fernet key, JWT and API secrets, connections), and no generated secret
but the pipeline's PostgreSQL role and S3 key (common.env.SCOPED_SECRETS["jobs"]).

A batch job runs with a lower CPU priority (`niceness`, BATCH_JOB_NICENESS): on two cores the
hourly aggregates would otherwise take the stream's core away while they run. The scheduler
then gives them only what the stream and the services leave idle; every thread of the job's
JVM and Python processes inherits the priority.
"""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

PYTHON_NAMES = ("python", "python3")
# nice 19: the least urgent work on the machine (a CFS weight of 15 against the stream's 1024)
DEFAULT_BATCH_NICENESS = 19


def batch_niceness(environ: dict[str, str]) -> int:
    """Return BATCH_JOB_NICENESS (0 to 19; default 19), refusing anything else by name."""
    raw = environ.get("BATCH_JOB_NICENESS", "") or str(DEFAULT_BATCH_NICENESS)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"BATCH_JOB_NICENESS must be an integer from 0 to 19, got {raw!r}") from None
    if not 0 <= value <= 19:
        raise ValueError(f"BATCH_JOB_NICENESS must be from 0 to 19, got {value}")
    return value


def popen_priority(niceness: int) -> dict:
    """Return Popen keywords that start the child at `niceness` (nothing for 0)."""
    if not niceness:
        return {}

    def lower_priority() -> None:  # in the child, before exec: every thread it makes inherits it
        os.setpriority(os.PRIO_PROCESS, 0, niceness)

    return {"preexec_fn": lower_priority}


def job_environment(environ: dict[str, str]) -> dict[str, str]:
    """Return the environment of a Spark job started from an Airflow task: `environ` without
    Airflow's variables (AIRFLOW*: its database URI, keys, secrets, connections), without the
    generated secrets a job may not hold, and with IOT_ENV_FILE the jobs' own (IOT_JOB_ENV_FILE)."""
    from common.env import scoped

    env = {k: v for k, v in environ.items() if not k.lstrip("_").upper().startswith("AIRFLOW")}
    if job_file := env.pop("IOT_JOB_ENV_FILE", None):  # the task's own IOT_ENV_FILE holds more
        env["IOT_ENV_FILE"] = job_file
    return scoped(env, "jobs")


def pyspark_driver_pids(spark_submit_pid: int) -> list[int]:
    """Return the pids of the Python processes spark-submit started (the PySpark driver)."""
    import psutil

    try:
        children = psutil.Process(spark_submit_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            name = os.path.basename(child.exe() or child.name())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name.startswith(PYTHON_NAMES):
            pids.append(child.pid)
    return pids


class GracefulSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit in its own session; on kill, SIGTERM to the PySpark driver, then wait.
    `batch`: a batch job, started at BATCH_JOB_NICENESS (see the module's doc); `stream`: the
    streaming job, whose driver gets STREAM_DRIVER_JAVA_OPTIONS (jobs/spark_conf.py)."""

    def __init__(self, *, stop_timeout: timedelta = timedelta(minutes=2), batch: bool = False, stream: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.stop_timeout = stop_timeout
        self.batch = batch
        self.stream = stream

    def execute(self, context) -> None:
        """Run spark-submit to completion (local and client modes; others as the provider does)."""
        if self._hook is None:
            self._hook = self._get_hook()
        hook = self._hook
        if hook._should_track_driver_status or hook._should_track_driver_via_k8s_api() or hook._is_yarn_cluster_mode:
            return super().execute(context)
        # its own session: the supervisor's SIGTERM/SIGKILL of the task's group does not reach it
        env = job_environment({**os.environ, **(hook._env_vars or {})})
        hook._env_vars = hook._env = None  # else the hook rebuilds the environment from os.environ
        priority = popen_priority(batch_niceness(env)) if self.batch else {}
        if self.stream:
            from common.env import Env
            from common.jvm import stream_driver_java_options

            hook._conf = {**hook._conf, "spark.driver.extraJavaOptions": stream_driver_java_options(Env())}
        hook.submit(self.application, start_new_session=True, env=env, **priority)
        return None

    def on_kill(self) -> None:
        """Ask the driver to stop after its running micro-batch; force it after stop_timeout."""
        hook = self._hook
        process = getattr(hook, "_submit_sp", None) if hook else None
        if process is None or process.poll() is not None:
            return
        drivers = pyspark_driver_pids(process.pid) or [process.pid]
        self.log.info("asking the Spark driver to stop after its running batch: SIGTERM to %s", drivers)
        for pid in drivers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=self.stop_timeout.total_seconds())
        except subprocess.TimeoutExpired:
            self.log.warning("the driver did not stop within %s: killing spark-submit", self.stop_timeout)
            super().on_kill()
        else:
            self.log.info("spark-submit exited with %s", process.returncode)
