"""The stack's use of Airflow 3's REST API (/api/v2), through Airflow's own client
(`apache-airflow-client`, the same version as Airflow), for `make up`/`make down`, the tests
and the benchmarks: unpause the DAGs, trigger runs, read task instances, stop a running
stream cleanly."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

STREAM_DAGS = ("iot_stream", "iot_stream_adhoc")


class AirflowApiError(RuntimeError):
    """An API call answered with an error status, or the token could not be had."""


class AirflowApi:
    """Token-authenticated calls to the api-server (the simple auth manager's /auth/token, which
    is not part of the REST API the client covers; the rest through the client)."""

    def __init__(self, base_url: str, user: str, password: str, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.password = password
        self.timeout_s = timeout_s
        self._client = None

    def token(self) -> str:
        """Return a JWT for the admin user."""
        request = urllib.request.Request(
            f"{self.base_url}/auth/token", method="POST",
            data=json.dumps({"username": self.user, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read().decode())["access_token"]
        except urllib.error.HTTPError as exc:
            raise AirflowApiError(f"POST /auth/token as {self.user}: HTTP {exc.code} "
                                  f"{exc.read().decode()[:500]}") from exc

    def _api(self, kind: str):
        """Return one of the client's API classes (DAGApi, DagRunApi, TaskInstanceApi), logged in."""
        import airflow_client.client as airflow_client

        if self._client is None:
            config = airflow_client.Configuration(host=self.base_url, access_token=self.token())
            self._client = airflow_client.ApiClient(config)
        return getattr(airflow_client, kind)(self._client)

    def _call(self, what: str, call, *args, **kwargs):
        from airflow_client.client.exceptions import ApiException

        try:
            return call(*args, _request_timeout=self.timeout_s, **kwargs)
        except ApiException as exc:
            raise AirflowApiError(f"{what}: HTTP {exc.status} {(exc.body or '')[:500]}") from exc

    def dag(self, dag_id: str) -> dict | None:
        """Return the DAG's details, or None when the dag-processor has not registered it yet."""
        from airflow_client.client.exceptions import NotFoundException

        try:
            dag = self._api("DAGApi").get_dag(dag_id, _request_timeout=self.timeout_s)
        except NotFoundException:
            return None
        return dag.model_dump(mode="json", by_alias=True)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause a DAG."""
        from airflow_client.client.models.dag_patch_body import DAGPatchBody

        self._call(f"pause {dag_id}" if paused else f"unpause {dag_id}", self._api("DAGApi").patch_dag,
                   dag_id, DAGPatchBody(is_paused=paused), update_mask=["is_paused"])

    def trigger(self, dag_id: str, conf: dict) -> str:
        """Trigger a manual run with `conf`; return its run id."""
        from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

        run = self._call(f"trigger {dag_id}", self._api("DagRunApi").trigger_dag_run,
                         dag_id, TriggerDAGRunPostBody(logical_date=None, conf=conf))
        return run.dag_run_id

    def task_instances(self, dag_id: str, run_id: str = "~", state: str | None = None, **filters) -> list[dict]:
        """Return the task instances of a run (every run with "~"), optionally in one state and
        by the client's other filters (end_date_gte=datetime, limit=100, …), as JSON-like dicts."""
        found = self._call(f"task instances of {dag_id} {run_id}", self._api("TaskInstanceApi").get_task_instances,
                           dag_id, run_id, **({"state": [state]} if state else {}), **filters)
        return [ti.model_dump(mode="json", by_alias=True) for ti in found.task_instances]

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """Set a task instance's state, as the UI's "Mark as" does (a running task gets on_kill)."""
        from airflow_client.client.models.patch_task_instance_body import PatchTaskInstanceBody

        self._call(f"mark {dag_id} {run_id} {task_id} {state}", self._api("TaskInstanceApi").patch_task_instance,
                   dag_id, run_id, task_id, PatchTaskInstanceBody(new_state=state))

    def stop_running(self, dag_id: str) -> list[str]:
        """Mark the DAG's running task instances success, which stops them cleanly; return runs."""
        runs = []
        for ti in self.task_instances(dag_id, state="running"):
            log.info("stopping %s run %s task %s", dag_id, ti["dag_run_id"], ti["task_id"])
            self.set_task_state(dag_id, ti["dag_run_id"], ti["task_id"], "success")
            runs.append(ti["dag_run_id"])
        return runs
