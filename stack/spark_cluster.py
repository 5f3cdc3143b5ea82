"""A Spark standalone cluster (one master, one worker) from the installed pyspark, on loopback.

The jobs run unchanged on it: only the master differs (`--master spark://127.0.0.1:7077`, or
SPARK_MASTER for the jobs Airflow submits). The cluster test starts one; by hand:

    stack/bin/stackctl python -m stack.spark_cluster            # until Ctrl-C
    stack/bin/stackctl spark-submit --master spark://127.0.0.1:7077 jobs/stream.py --available-now

The web UIs default to 8090 (master) and 8091 (worker): Airflow has 8080.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def spark_class() -> str:
    """Return the `spark-class` launcher of the pyspark installed beside this interpreter."""
    path = Path(sys.executable).parent / "spark-class"
    if not path.exists():
        found = shutil.which("spark-class")
        if not found:
            raise FileNotFoundError("spark-class not found: run inside the project's venv (stack/bin/stackctl python)")
        return found
    return str(path)


@dataclass
class StandaloneCluster:
    """One master and one worker as child processes, bound to `host`; a context manager."""

    work_dir: Path
    host: str = "127.0.0.1"
    port: int = 7077
    master_ui_port: int = 8090
    worker_ui_port: int = 8091
    cores: int = 2
    memory: str = "2g"
    ready_timeout: float = 120.0
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SPARK_LOCAL_IP": self.host, "SPARK_WORKER_DIR": str(self.work_dir / "work"),
               "SPARK_NO_DAEMONIZE": "1"}
        out = (self.work_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen([spark_class(), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        out.close()
        self._procs.append(proc)
        return proc

    def master_state(self) -> dict:
        """Return the master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"http://{self.host}:{self.master_ui_port}/json/", timeout=5) as resp:
            return json.load(resp)

    def alive_workers(self) -> int:
        return sum(w["state"] == "ALIVE" for w in self.master_state()["workers"])

    def start(self) -> StandaloneCluster:
        """Start the master and the worker; return once the worker is registered and ALIVE."""
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", self.host,
                    "--port", str(self.port), "--webui-port", str(self.master_ui_port))
        self._start("worker", "org.apache.spark.deploy.worker.Worker", self.master_url, "--host", self.host,
                    "--cores", str(self.cores), "--memory", self.memory, "--webui-port", str(self.worker_ui_port),
                    "--work-dir", str(self.work_dir / "work"))
        try:
            return self._wait_ready()
        except BaseException:
            self.stop()  # never leave a half-started cluster behind (it holds 7077, 8090, 8091)
            raise

    def _wait_ready(self) -> StandaloneCluster:
        deadline = time.monotonic() + self.ready_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Spark standalone process exited with {proc.returncode}; "
                                       f"see {self.work_dir}/master.log and worker.log")
            try:
                if self.alive_workers() >= 1:
                    log.info("Spark standalone cluster ready at %s (UI http://%s:%d)", self.master_url, self.host,
                             self.master_ui_port)
                    return self
            # OSError: the master's UI is not listening yet. ValueError: it is, but still serves
            # its HTML page for /json/ while starting (seen in CI).
            except (OSError, ValueError) as exc:
                last_error = exc
            time.sleep(0.5)  # polling interval of the readiness probe
        raise TimeoutError(f"no ALIVE worker within {self.ready_timeout:.0f} s (last error: {last_error}); "
                           f"see {self.work_dir}/master.log and worker.log")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker, then the master (SIGTERM, then SIGKILL after `timeout`)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._procs.clear()

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a cluster in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m stack.spark_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path(".stack/spark-cluster"),
                        help="logs and the worker's application folders (default .stack/spark-cluster)")
    parser.add_argument("--port", type=int, default=7077, help="master port (default 7077)")
    parser.add_argument("--cores", type=int, default=2, help="worker cores (default 2)")
    parser.add_argument("--memory", default="2g", help="worker memory (default 2g)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = {"signal": None}

    def handler(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    with StandaloneCluster(args.work_dir, port=args.port, cores=args.cores, memory=args.memory) as cluster:
        print(f"master: {cluster.master_url}  UI: http://{cluster.host}:{cluster.master_ui_port}  (Ctrl-C stops)")
        while stop["signal"] is None:
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
