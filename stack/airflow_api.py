"""A small client of Airflow 3's REST API (/api/v2), for `make up`/`make down` and the tests:
unpause the stream DAG, trigger runs, stop a running stream cleanly."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)

STREAM_DAGS = ("iot_stream", "iot_stream_adhoc")


class AirflowApiError(RuntimeError):
    """An API call answered with an error status."""


class AirflowApi:
    """Token-authenticated calls to the api-server (simple auth manager's /auth/token)."""

    def __init__(self, base_url: str, user: str, password: str, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.password = password
        self.timeout_s = timeout_s
        self._token: str | None = None

    def _send(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise AirflowApiError(f"{method} {path}: HTTP {exc.code} {exc.read().decode()[:500]}") from exc
        return json.loads(text) if text else {}

    def token(self) -> str:
        """Return a JWT for the admin user (fetched once)."""
        if self._token is None:
            answer = self._send("POST", "/auth/token", {"username": self.user, "password": self.password}, auth=False)
            self._token = answer["access_token"]
        return self._token

    def dag(self, dag_id: str) -> dict | None:
        """Return the DAG's details, or None when the dag-processor has not registered it yet."""
        try:
            return self._send("GET", f"/api/v2/dags/{dag_id}")
        except AirflowApiError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause a DAG."""
        self._send("PATCH", f"/api/v2/dags/{dag_id}?update_mask=is_paused", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict) -> str:
        """Trigger a manual run with `conf`; return its run id."""
        return self._send("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def task_instances(self, dag_id: str, run_id: str = "~", state: str | None = None, **filters) -> list[dict]:
        """Return the task instances of a run (every run with "~"), optionally in one state and
        by the API's other filters (end_date_gte="2026-…", limit=100, …)."""
        params = {**({"state": state} if state else {}), **filters}
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._send("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances{query}")["task_instances"]

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """Set a task instance's state, as the UI's "Mark as" does (a running task gets on_kill)."""
        self._send("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
                   {"new_state": state})

    def stop_running(self, dag_id: str) -> list[str]:
        """Mark the DAG's running task instances success, which stops them cleanly; return runs."""
        runs = []
        for ti in self.task_instances(dag_id, state="running"):
            log.info("stopping %s run %s task %s", dag_id, ti["dag_run_id"], ti["task_id"])
            self.set_task_state(dag_id, ti["dag_run_id"], ti["task_id"], "success")
            runs.append(ti["dag_run_id"])
        return runs
