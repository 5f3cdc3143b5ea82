"""Bring the local stack up and down, report its status, wipe its data."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import xmlrpc.client
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from common.probes import NotReady, airflow_health, http_ok, port_open, wait_for
from stack import class_archive, deploy, init, install
from stack.airflow_api import STREAM_DAGS, AirflowApi, AirflowApiError
from stack.services import (
    AIRFLOW_PROGRAMS,
    DASHBOARD_PROGRAMS,
    INFRA_PROGRAMS,
    PIPELINE_PROGRAMS,
    make_home_private,
    render_all,
    services,
    superset_dashboard_url,
    sweep_scratch,
)
from stack.settings import GENERATED_SECRETS, StackSettings, record_secrets_in_use

log = logging.getLogger(__name__)


class Supervisor:
    """A thin client of the stack's supervisord, over its unix socket."""

    def __init__(self, s: StackSettings) -> None:
        self.s = s
        self.conf = s.run_dir / "supervisord.conf"

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.s.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def running(self) -> bool:
        """Return whether our supervisord answers on its socket."""
        if not self.s.supervisor_socket.exists():
            return False
        try:
            return self._proxy().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault):
            return False

    def start_daemon(self) -> None:
        """Start supervisord (it daemonizes) and wait until it answers."""
        subprocess.run([str(self.s.venv / "bin" / "supervisord"), "-c", str(self.conf)], check=True)
        wait_for("supervisord", self.running, 30)

    def reload_config(self) -> None:
        """Make a running supervisord pick up a regenerated config (changed programs restart)."""
        proxy = self._proxy()
        added, changed, removed = proxy.supervisor.reloadConfig()[0]
        for name in removed + changed:
            proxy.supervisor.stopProcessGroup(name)
            proxy.supervisor.removeProcessGroup(name)
        for name in added + changed:
            proxy.supervisor.addProcessGroup(name)

    def info(self, name: str) -> dict:
        """Return supervisord's process info for program `name`."""
        return self._proxy().supervisor.getProcessInfo(name)

    def all_info(self) -> dict[str, dict]:
        """Return process info of every program, by name."""
        return {p["name"]: p for p in self._proxy().supervisor.getAllProcessInfo()}

    def start(self, name: str) -> None:
        """Start program `name` unless it already runs."""
        if self.info(name)["statename"] in {"RUNNING", "STARTING"}:
            return
        try:
            self._proxy().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            raise RuntimeError(f"supervisord could not start {name}: {fault.faultString}\n"
                               f"{self.tail(name)}") from None

    def stop(self, name: str) -> None:
        """Stop program `name` if it runs."""
        if self.info(name)["statename"] in {"RUNNING", "STARTING", "BACKOFF"}:
            self._proxy().supervisor.stopProcess(name, True)

    def shutdown(self) -> None:
        """Stop every program, then supervisord itself, waiting until it is gone."""
        proxy = self._proxy()
        proxy.supervisor.stopAllProcesses(True)
        proxy.supervisor.shutdown()
        wait_for("supervisord to exit", lambda: not self.running(), 60)

    def tail(self, name: str, lines: int = 25) -> str:
        """Return the last lines of a program's log, for error messages."""
        path = self.s.log_dir / f"{name}.log"
        if not path.exists():
            return f"(no log at {path})"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"last lines of {path}:\n" + "\n".join("    " + t for t in text)

    def alive_or_raise(self, name: str) -> None:
        """Raise with the program's log when it has died (so a wait fails fast)."""
        state = self.info(name)["statename"]
        if state in {"FATAL", "EXITED", "BACKOFF", "STOPPED"}:
            raise RuntimeError(f"{name} is {state}\n{self.tail(name)}")


def _check_ports(s: StackSettings, sup: Supervisor | None) -> None:
    """Fail naming the port and its variable when a service's port is taken by a stranger."""
    owned = set()
    if sup is not None:
        owned = {n for n, p in sup.all_info().items() if p["statename"] in {"RUNNING", "STARTING"}}
    variables = {
        "postgres": "POSTGRES_PORT", "kafka": "KAFKA_PORT", "minio": "MINIO_PORT",
        "minio-console": "MINIO_CONSOLE_PORT", "airflow-api-server": "AIRFLOW_PORT",
        "superset": "SUPERSET_PORT",
    }
    checks = [(svc.name, svc.port, variables[svc.name]) for svc in services(s) if svc.port]
    checks += [("kafka", s.kafka_controller_port, "KAFKA_CONTROLLER_PORT"),
               ("kafka", s.kafka_internal_port, "KAFKA_INTERNAL_PORT")]
    for name, port, variable in checks:
        program = "minio" if name == "minio-console" else name
        if program in owned:
            continue
        if port_open("127.0.0.1", port):
            raise install.MissingPrerequisite(
                f"port {port} on 127.0.0.1 (for {name}) is already in use by another process. "
                f"Stop that process (`ss -ltnp 'sport = :{port}'` shows it) or set {variable} "
                "in .env to a free port."
            )


def _probe(sup: Supervisor, name: str, probe, timeout_s: float) -> float:
    def ready() -> bool:
        sup.alive_or_raise(name)
        return probe()

    try:
        return wait_for(name, ready, timeout_s, on_fail=lambda: sup.tail(name))
    except RuntimeError as exc:
        raise NotReady(str(exc)) from None


@dataclass
class _Up:
    """What `up`'s phases hand on to each other."""

    java: str = ""
    pg_bindir: Path | None = None
    sup: Supervisor | None = None
    superset_init: Future | None = None  # init.init_superset, run beside the phases after configure


def _install(s: StackSettings, up: _Up) -> dict[str, float]:
    """The venvs, jars, Go binaries and the project's jar; as root, the service user's layout."""
    up.java = install.check_java()
    up.pg_bindir = install.postgres_bindir()
    installed = install.build_superset_venv(s)
    installed |= install.fetch_jars(s) | install.build_go_binaries(s)
    installed |= install.build_project_jar(s, up.java)
    if s.service_user:
        # as root, the services run as an unprivileged user (stack/deploy.py)
        user = deploy.prepare(s)
        deploy.share_cache(s, user, force=installed)
    return {}


def _configure(s: StackSettings, up: _Up) -> dict[str, float]:
    """Configs, first-start initialisation, and supervisord running with them."""
    # from here on the stack's data is made with .env's secrets: a later `.env` that lacks one
    # is refused instead of given a new value (stack/settings.py, ensure_env_file)
    record_secrets_in_use(s.home, set(GENERATED_SECRETS))
    render_all(s, up.java, up.pg_bindir)
    if swept := sweep_scratch(s):
        log.info("removed %d temporary files and folders that Spark drivers that are gone left behind", swept)
    init.init_postgres_cluster(s, up.pg_bindir)
    init.format_kafka_storage(s, up.java)
    up.sup = Supervisor(s)
    if up.sup.running():
        up.sup.reload_config()
        _check_ports(s, up.sup)
    else:
        _check_ports(s, None)
        up.sup.start_daemon()
    # Superset's first initialisation (its metadata in SQLite: it needs no service) takes about
    # 30 s of one core: it runs beside the next phases, mostly waits for services, instead of
    # after them; _start_dashboard waits for it (and raises what it raised)
    up.superset_init = _beside(init.init_superset, s)
    return {}


def _beside(function, *args) -> Future:
    """Run function(*args) in a thread of its own; return its future. (Should a later phase
    fail, the interpreter still waits for the thread before it exits.)"""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=function.__name__)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)  # no more work for it; the submitted call runs to its end
    return future


def _start_infra(s: StackSettings, up: _Up) -> dict[str, float]:
    """PostgreSQL, Kafka and MinIO, each probed until ready."""
    for name in INFRA_PROGRAMS:
        up.sup.start(name)
    return {"postgres": _probe(up.sup, "postgres", lambda: init.pg_ready(s), 60),
            "kafka": _probe(up.sup, "kafka", lambda: init.kafka_ready(s), 90),
            "minio": _probe(up.sup, "minio",
                            lambda: http_ok(f"http://127.0.0.1:{s.minio_port}/minio/health/ready"), 60)}


def _init_services(s: StackSettings, up: _Up) -> dict[str, float]:
    """Roles, databases and sql/; Kafka's users, ACLs and topic; the bucket and its key; Airflow's DB."""
    init.init_postgres(s)
    init.init_kafka(s)
    init.init_minio(s)
    init.migrate_airflow(s)
    return {}


def _class_archive(s: StackSettings, up: _Up) -> dict[str, float]:
    """The Spark drivers' class archive, made once (stack/class_archive.py): the stream's first
    driver, which Airflow starts next, already maps it."""
    class_archive.ensure_archive(s, up.java)
    return {}


def _start_airflow(s: StackSettings, up: _Up) -> dict[str, float]:
    """Airflow's programs, probed through the api-server's health of each."""
    for name in AIRFLOW_PROGRAMS:
        up.sup.start(name)
    base = f"http://127.0.0.1:{s.airflow_port}"

    def airflow_healthy() -> bool:
        for name in AIRFLOW_PROGRAMS:
            up.sup.alive_or_raise(name)
        health = airflow_health(base)
        return all(health.get(c) == "healthy" for c in ("metadatabase", "scheduler", "dag_processor",
                                                          "triggerer"))

    return {"airflow": wait_for("Airflow (api-server health of scheduler, dag-processor, triggerer)",
                                airflow_healthy, 180,
                                on_fail=lambda: "\n".join(up.sup.tail(n, 10) for n in AIRFLOW_PROGRAMS))}


def _start_pipeline(s: StackSettings, up: _Up) -> dict[str, float]:
    """The producer, then the DAGs unpaused (the stream, aggregates and retention run under Airflow)."""
    for name in PIPELINE_PROGRAMS:
        up.sup.start(name)
    _probe(up.sup, "producer", lambda: up.sup.info("producer")["statename"] == "RUNNING", 30)
    if not s.unpause_dags:
        return {}
    t = time.monotonic()
    unpause_dags(s)
    return {"dags": time.monotonic() - t}


def _start_dashboard(s: StackSettings, up: _Up) -> dict[str, float]:
    """Superset: initialised (beside the phases since configure), started, probed, and the
    dashboard provisioned."""
    t = time.monotonic()
    up.superset_init.result()  # started by _configure
    waited = time.monotonic() - t
    for name in DASHBOARD_PROGRAMS:
        up.sup.start(name)
    _probe(up.sup, "superset", lambda: http_ok(f"http://127.0.0.1:{s.superset_port}/health"), 120)
    log.info("%s", init.provision_superset(s))
    return {"superset_init_waited": waited}


# `make up`, in order: (name of its timing, phase). Each phase may add timings of its own.
UP_PHASES = (
    ("install", _install),
    ("configure", _configure),
    ("infra_start", _start_infra),
    ("init", _init_services),
    ("spark_class_archive", _class_archive),
    ("airflow_start", _start_airflow),
    ("pipeline", _start_pipeline),
    ("superset", _start_dashboard),
)


def up(s: StackSettings) -> dict[str, float]:
    """Install what is missing, start every service, initialise it; return phase timings."""
    timings: dict[str, float] = {}
    state = _Up()
    t0 = time.monotonic()
    for name, phase in UP_PHASES:
        t = time.monotonic()
        timings.update(phase(s, state))
        timings[name] = time.monotonic() - t
    # again, now that every program runs with umask 077: programs of an older stack wrote
    # files until `make up` restarted them
    if changed := make_home_private(s):
        log.info("made %d files and folders written before the restarts private", changed)
    timings["total"] = time.monotonic() - t0
    return timings


def airflow_api(s: StackSettings) -> AirflowApi:
    """Return a client of the stack's Airflow REST API."""
    return AirflowApi(f"http://127.0.0.1:{s.airflow_port}", s.airflow_admin_user, s.airflow_admin_password)


def unpause_dags(s: StackSettings) -> None:
    """Unpause AIRFLOW_UNPAUSE_DAGS once the dag-processor has registered them: the scheduler
    then keeps one run of the streaming job going and runs the hourly and daily work."""
    api = airflow_api(s)
    for dag_id in s.unpause_dags:
        wait_for(f"the {dag_id} DAG to be parsed", lambda d=dag_id: api.dag(d) is not None, 120)
        api.set_paused(dag_id, False)
    log.info("unpaused %s: Airflow runs the pipeline (http://127.0.0.1:%s/dags)", ", ".join(s.unpause_dags),
             s.airflow_port)


def stream_driver_processes(s: StackSettings) -> list[psutil.Process]:
    """Return the processes (spark-submit JVMs and PySpark drivers) running this clone's stream."""
    needle = str(s.app / "jobs" / "stream.py")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(needle in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def stop_streams(s: StackSettings, timeout_s: float = 150) -> int:
    """Stop the stream DAGs' drivers cleanly before Airflow goes down: pause iot_stream, mark
    running stream tasks success (their on_kill lets the micro-batch finish), wait for the
    drivers to exit (up to `timeout_s`; 0: kill them at once); return how many driver
    processes had to be killed."""
    api = airflow_api(s)
    try:
        api.set_paused("iot_stream", True)
        for dag_id in STREAM_DAGS:
            api.stop_running(dag_id)
    except (AirflowApiError, OSError) as exc:
        log.warning("could not stop the stream through Airflow (%s): signalling its drivers directly", exc)
        for proc in stream_driver_processes(s):
            if "python" in proc.name():
                proc.terminate()
    try:
        wait_for("the stream drivers to finish their micro-batch and exit",
                 lambda: not stream_driver_processes(s), timeout_s)
        return 0
    except NotReady:
        left = stream_driver_processes(s)
        perf_data = [_perf_data_file(proc) for proc in left]
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:  # it exited meanwhile: what was asked
                pass
        psutil.wait_procs(left, timeout=30)  # gone before their scratch folders are swept
        # what a JVM removes when it exits, and SIGKILL leaves behind (SIGTERM instead: the
        # drivers were gone in 2 s, but supervisord's shutdown that follows took 30 s, not 4)
        for path in perf_data:
            if path is not None:
                path.unlink(missing_ok=True)
        return len(left)


def _perf_data_file(proc: psutil.Process) -> Path | None:
    """Return the file a JVM's performance counters live in (/tmp/hsperfdata_<user>/<pid>, in
    /tmp whatever java.io.tmpdir says), or None when `proc` is not a JVM or is gone."""
    try:
        if proc.name() != "java":
            return None
        return Path("/tmp") / f"hsperfdata_{proc.username()}" / str(proc.pid)
    except psutil.NoSuchProcess:
        return None


def down(s: StackSettings, drain_s: float = 150) -> bool:
    """Stop every service and supervisord; return False when nothing was running.
    A running stream is stopped cleanly first, its micro-batch finished within `drain_s`
    (see stop_streams; 0: its drivers killed, for `clean`, which deletes what they wrote)."""
    sup = Supervisor(s)
    if not sup.running():
        return False
    if sup.info("airflow-api-server")["statename"] == "RUNNING" and stream_driver_processes(s):
        killed = stop_streams(s, drain_s)
        if killed and drain_s:
            log.warning("%d stream driver process(es) did not stop in time and were killed", killed)
    sup.shutdown()
    sweep_scratch(s)  # every service's driver is gone now
    return True


def status(s: StackSettings) -> list[dict[str, str]]:
    """Return one row per service: name, state, port, URL."""
    sup = Supervisor(s)
    infos = sup.all_info() if sup.running() else {}
    rows = []
    for svc in services(s):
        program = "minio" if svc.name == "minio-console" else svc.name
        info = infos.get(program)
        state = info["statename"] if info else "DOWN"
        if state == "RUNNING" and svc.port and not port_open("127.0.0.1", svc.port):
            state = "STARTING"
        rows.append({
            "service": svc.name, "state": state, "port": str(svc.port or "-"),
            "pid": str(info["pid"]) if info and info["pid"] else "-", "url": svc.url,
        })
    return rows


def clean(s: StackSettings) -> list[Path]:
    """Stop the stack and delete its data (STACK_HOME and PostgreSQL's data); keep caches.
    The stream's drivers are killed, not drained: their micro-batch would be deleted next."""
    down(s, drain_s=0)
    targets = [s.home]
    if s.service_user or not s.pg_data.is_relative_to(s.home):
        targets.insert(0, s.root_dir)  # as root: the services' state, code, configs and PostgreSQL
    removed = []
    for path in targets:
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def credentials(s: StackSettings) -> dict[str, str]:
    """Return where to log in, for `make status`: users, and the .env variable holding each
    password, never a password itself (this output reaches terminals and CI logs)."""
    env_file = s.repo / ".env"
    return {
        "Airflow UI": f"http://127.0.0.1:{s.airflow_port}  user {s.airflow_admin_user}, "
                      f"password AIRFLOW_ADMIN_PASSWORD in {env_file}",
        "MinIO console": f"http://127.0.0.1:{s.minio_console_port}  user {s.minio_root_user}, "
                         "password MINIO_ROOT_PASSWORD in .env",
        "Pipeline S3 key": f"{s.s3_access_key} (secret S3_SECRET_KEY in .env; bucket {s.bucket} only)",
        "Stream": f"Airflow DAG iot_stream, http://127.0.0.1:{s.airflow_port}/dags/iot_stream ("
                  + ("unpaused by make up)" if "iot_stream" in s.unpause_dags
                     else "left paused: not in AIRFLOW_UNPAUSE_DAGS)"),
        "Dashboard": f"{superset_dashboard_url(s)}  user {s.superset_admin_user}, "
                     "password SUPERSET_ADMIN_PASSWORD in .env (Superset)",
        "PostgreSQL": f"psql -h {s.pg_host} -p {s.pg_port} -U {s.pg_writer} {s.pg_db} "
                      "(PIPELINE_DB_PASSWORD in .env); BI role "
                      f"{s.pg_bi} (BI_DB_PASSWORD)",
        "Show a password": "grep '^AIRFLOW_ADMIN_PASSWORD=' .env   (the file is private to you, mode 600)",
    }
