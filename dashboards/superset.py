"""Provision Apache Superset from dashboards/spec.yaml through its REST API, idempotently.

    python -m dashboards.superset --url http://127.0.0.1:8088

`make up` runs it with Superset's own virtualenv after Superset is healthy. It logs in as the
admin (SUPERSET_ADMIN_USER / SUPERSET_ADMIN_PASSWORD), then creates or updates, by name: the
PostgreSQL database connection as the read-only BI role (BI_DB_USER / BI_DB_PASSWORD), one
virtual dataset per spec card (its query), one chart per card, and the dashboard (slug
`iot-monitoring`) with the cards at their positions and the spec's auto-refresh. A second run
creates nothing. Endpoints: /api/v1/security/login and csrf_token, /api/v1/database,
/api/v1/dataset (and /refresh), /api/v1/chart, /api/v1/dashboard.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from common.env import Env
from dashboards import source
from dashboards.source import BiDatabase, Provisioning, run_cli
from dashboards.spec import DASHBOARD_KEY, Card, Dashboard, card_description, spec_key_of

log = logging.getLogger("dashboards.superset")

DATABASE_NAME = "IoT lakehouse (marts)"
DASHBOARD_SLUG = DASHBOARD_KEY
SUPERSET_COLUMNS = 12  # the spec's grid has 24
HEIGHT_UNITS_PER_ROW = 7  # Superset's grid rows are 8 px; a spec row is about 56 px
VIZ = {"number": "big_number_total", "table": "table", "line": "echarts_timeseries_line",
       "bar": "echarts_timeseries_bar"}
TIME_GRAIN = {"minute_local": "PT1M", "hour_local": "PT1H"}


class SupersetError(RuntimeError):
    """Superset answered with an error; the message has the method, path, status and body."""


def settings_from_env(env: Env) -> Provisioning:
    return Provisioning.from_env(env, "SUPERSET_ADMIN_USER", "admin", "SUPERSET_ADMIN_PASSWORD",
                                 "run `make up` to generate it")


def sqlalchemy_uri(bi: BiDatabase) -> str:
    return f"postgresql+psycopg2://{quote(bi.user)}:{quote(bi.password, safe='')}@{bi.host}:{bi.port}/{bi.dbname}"


class Client:
    """Superset's REST API with a JWT and the CSRF token its write endpoints require."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Referer"] = self.url

    def request(self, method: str, path: str, body: dict | None = None):
        resp = self.http.request(method, self.url + path, json=body, timeout=self.timeout)
        if resp.status_code >= 400:
            raise SupersetError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def log_in(self, user: str, password: str) -> None:
        token = self.request("POST", "/api/v1/security/login",
                             {"username": user, "password": password, "provider": "db", "refresh": True})
        self.http.headers["Authorization"] = f"Bearer {token['access_token']}"
        self.http.headers["X-CSRFToken"] = self.request("GET", "/api/v1/security/csrf_token/")["result"]

    def all(self, resource: str, columns: str) -> list[dict]:
        """Return every object of `resource` with `columns` (paged by 100)."""
        found, page = [], 0
        while True:
            q = f"(columns:!({columns}),page:{page},page_size:100)"
            batch = self.request("GET", f"/api/v1/{resource}/?q={quote(q)}")["result"]
            found += batch
            if len(batch) < 100:
                return found
            page += 1

    def find(self, resource: str, column: str, value: str) -> dict | None:
        """Return the first object whose `column` equals `value`, or None."""
        q = f"(filters:!((col:{column},opr:eq,value:'{value.replace(chr(39), chr(33) + chr(39))}')),page_size:100)"
        found = self.request("GET", f"/api/v1/{resource}/?q={quote(q)}")["result"]
        return found[0] if found else None


def wait_until_healthy(url: str, timeout: float) -> None:
    from common.probes import http_ok

    source.wait_until_healthy("Superset", url, lambda: http_ok(url.rstrip("/") + "/health"), timeout)


def ensure_database(client: Client, s: Provisioning) -> int:
    body = {"database_name": DATABASE_NAME, "sqlalchemy_uri": sqlalchemy_uri(s.bi), "expose_in_sqllab": True}
    found = client.find("database", "database_name", DATABASE_NAME)
    if found:
        client.request("PUT", f"/api/v1/database/{found['id']}", body)
        return found["id"]
    log.info("added the database %r (role %s)", DATABASE_NAME, s.bi.user)
    return client.request("POST", "/api/v1/database/", body)["id"]


def ensure_dataset(client: Client, database_id: int, card: Card) -> int:
    """A virtual dataset named after the card, whose SQL is the card's query."""
    found = client.find("dataset", "table_name", f"iot_{card.key}")
    if found:
        client.request("PUT", f"/api/v1/dataset/{found['id']}?override_columns=true", {"sql": card.query})
        dataset_id = found["id"]
    else:
        dataset_id = client.request("POST", "/api/v1/dataset/", {
            "database": database_id, "schema": "marts", "table_name": f"iot_{card.key}", "sql": card.query})["id"]
    client.request("PUT", f"/api/v1/dataset/{dataset_id}/refresh")
    return dataset_id


def _metric(column: str) -> dict:
    """The marts are already at the chart's grain: MAX of the one value per point."""
    return {"expressionType": "SQL", "sqlExpression": f"MAX({column})", "label": column}


def chart_params(card: Card, dataset_id: int) -> dict:
    v = card.visualization
    params: dict = {"datasource": f"{dataset_id}__table", "viz_type": VIZ[card.kind], "adhoc_filters": []}
    if card.kind == "number":
        params.update(metric=_metric(v["value"]), header_font_size=0.4, subheader="")
    elif card.kind == "table":
        params.update(query_mode="raw", all_columns=list(v["columns"]), row_limit=1000, order_by_cols=[],
                      server_pagination=False)
    else:
        params.update(x_axis=v["x"], time_grain_sqla=TIME_GRAIN.get(v["x"], "PT1M"), metrics=[_metric(v["y"])],
                      groupby=[v["series"]], row_limit=10000, time_range="No filter", show_legend=True,
                      rich_tooltip=True)
    return params


def ensure_chart(client: Client, card: Card, dataset_id: int, dashboard_id: int, charts: dict[str, int]) -> int:
    """Create or update the card's chart; `charts` maps spec keys to existing chart ids."""
    body = {"slice_name": card.title, "viz_type": VIZ[card.kind], "datasource_id": dataset_id,
            "datasource_type": "table", "params": json.dumps(chart_params(card, dataset_id)),
            "description": card_description(card), "dashboards": [dashboard_id]}
    if card.key in charts:
        client.request("PUT", f"/api/v1/chart/{charts[card.key]}", body)
        return charts[card.key]
    log.info("created chart %r", card.title)
    return client.request("POST", "/api/v1/chart/", body)["id"]


def position_json(spec: Dashboard, chart_ids: dict[str, int]) -> dict:
    """Superset's dashboard layout: one ROW per spec row, the cards in it by column."""
    layout: dict = {
        "DASHBOARD_VERSION_KEY": "v2",
        "ROOT_ID": {"type": "ROOT", "id": "ROOT_ID", "children": ["GRID_ID"]},
        "GRID_ID": {"type": "GRID", "id": "GRID_ID", "children": [], "parents": ["ROOT_ID"]},
        "HEADER_ID": {"id": "HEADER_ID", "type": "HEADER", "meta": {"text": spec.title}},
    }
    for row in sorted({c.position.row for c in spec.cards}):
        row_id = f"ROW-{row}"
        cards = sorted((c for c in spec.cards if c.position.row == row), key=lambda c: c.position.col)
        layout["GRID_ID"]["children"].append(row_id)
        layout[row_id] = {"type": "ROW", "id": row_id, "children": [], "parents": ["ROOT_ID", "GRID_ID"],
                          "meta": {"background": "BACKGROUND_TRANSPARENT"}}
        for card in cards:
            chart_id = f"CHART-{card.key}"
            layout[row_id]["children"].append(chart_id)
            layout[chart_id] = {"type": "CHART", "id": chart_id, "children": [],
                                "parents": ["ROOT_ID", "GRID_ID", row_id],
                                "meta": {"chartId": chart_ids[card.key], "sliceName": card.title,
                                         "width": max(1, card.position.width * SUPERSET_COLUMNS // 24),
                                         "height": card.position.height * HEIGHT_UNITS_PER_ROW}}
    return layout


def provision(client: Client, s: Provisioning, spec: Dashboard) -> dict:
    """Make Superset match the spec; return {"dashboard_id", "chart_ids", "url"}."""
    client.log_in(s.admin_user, s.admin_password)
    database_id = ensure_database(client, s)
    found = client.find("dashboard", "slug", DASHBOARD_SLUG)
    dashboard_id = found["id"] if found else client.request("POST", "/api/v1/dashboard/", {
        "dashboard_title": spec.title, "slug": DASHBOARD_SLUG, "published": True})["id"]
    charts = {spec_key_of(c.get("description")): c["id"] for c in client.all("chart", "id,description")}
    chart_ids = {c.key: ensure_chart(client, c, ensure_dataset(client, database_id, c), dashboard_id, charts)
                 for c in spec.cards}
    client.request("PUT", f"/api/v1/dashboard/{dashboard_id}", {
        "dashboard_title": spec.title, "slug": DASHBOARD_SLUG, "published": True,
        "position_json": json.dumps(position_json(spec, chart_ids)),
        "json_metadata": json.dumps({"refresh_frequency": spec.refresh_seconds, "timed_refresh_immune_slices": [],
                                     "expanded_slices": {}, "color_scheme": "", "label_colors": {}}),
    })
    return {"dashboard_id": dashboard_id, "chart_ids": chart_ids,
            "url": f"{client.url}/superset/dashboard/{DASHBOARD_SLUG}/"}


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m dashboards.superset", __doc__, "http://127.0.0.1:8088", 120.0, (SupersetError,),
                   settings_from_env, wait_until_healthy,
                   lambda url, settings, spec: provision(Client(url), settings, spec), argv)


if __name__ == "__main__":
    raise SystemExit(main())
