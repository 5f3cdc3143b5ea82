"""Provision Metabase from dashboards/spec.yaml through its REST API, idempotently.

    python -m dashboards.metabase --url http://metabase:3000

On a fresh Metabase it completes the setup (admin from METABASE_ADMIN_EMAIL and
METABASE_ADMIN_PASSWORD); later runs log in. Then it creates or updates, by name: the
PostgreSQL data source (the read-only BI role: BI_DB_USER / BI_DB_PASSWORD on POSTGRES_HOST),
a collection, one native-query card per spec card, and the dashboard with the cards at their
positions. A second run changes nothing it does not need to, and never duplicates. No dump of
Metabase's application database is involved.

Metabase keeps no auto-refresh setting on a dashboard: auto-refresh is part of the URL
(`#refresh=60`), which this prints. The Docker stack runs it as the `metabase-provision` job.
Endpoints used (Metabase API docs): GET /api/health, GET /api/session/properties, POST
/api/setup, POST /api/session, GET/POST /api/database, PUT /api/database/:id, GET/POST
/api/collection, GET /api/collection/:id/items, POST /api/card, PUT /api/card/:id, POST
/api/dashboard, GET/PUT /api/dashboard/:id.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

from common.env import Env
from dashboards import source
from dashboards.source import Provisioning, run_cli
from dashboards.spec import DASHBOARD_KEY, Card, Dashboard, card_description, spec_key_of

log = logging.getLogger("dashboards.metabase")

DATABASE_NAME = "IoT lakehouse (marts)"
COLLECTION_NAME = "IoT lakehouse"
DISPLAY = {"number": "scalar", "table": "table", "line": "line", "bar": "bar"}


class MetabaseError(RuntimeError):
    """Metabase answered with an error; the message has the method, path, status and body."""


@dataclass
class Client:
    """A minimal JSON client for Metabase's REST API (session header X-Metabase-Session)."""

    url: str
    timeout: float = 30.0
    session: str | None = None

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.session:
            req.add_header("X-Metabase-Session", self.session)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise MetabaseError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode()[:500]}") from exc
        return json.loads(text) if text else None

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def put(self, path: str, body: dict):
        return self.request("PUT", path, body)


def settings_from_env(env: Env) -> Provisioning:
    return Provisioning.from_env(env, "METABASE_ADMIN_EMAIL", "admin@example.com", "METABASE_ADMIN_PASSWORD",
                                 "run `make env` to generate it")


def wait_until_healthy(client: Client, timeout: float) -> None:
    """Poll GET /api/health until {"status": "ok"} (a 503 while it migrates counts as not yet)."""
    source.wait_until_healthy("Metabase", client.url,
                              lambda: (client.get("/api/health") or {}).get("status") == "ok", timeout)


def log_in(client: Client, s: Provisioning) -> str:
    """Complete the first-run setup, or log in; set and return the session id."""
    props = client.get("/api/session/properties")
    if not props.get("has-user-setup"):
        token = props.get("setup-token")
        if not token:
            raise MetabaseError("Metabase is not set up and offers no setup-token")
        answer = client.post("/api/setup", {
            "token": token,
            "user": {"first_name": "IoT", "last_name": "Admin", "email": s.admin_user,
                     "password": s.admin_password, "site_name": "IoT lakehouse"},
            "prefs": {"site_name": "IoT lakehouse", "site_locale": "en", "allow_tracking": False},
        })
        log.info("completed Metabase's first-run setup (admin %s)", s.admin_user)
    else:
        answer = client.post("/api/session", {"username": s.admin_user, "password": s.admin_password})
    client.session = answer["id"]
    return client.session


def _items(answer) -> list[dict]:
    """Metabase lists are either a bare list or {"data": [...], "total": n}."""
    return answer["data"] if isinstance(answer, dict) else answer


def ensure_database(client: Client, s: Provisioning) -> int:
    body = {"engine": "postgres", "name": DATABASE_NAME, "details": {
        "host": s.bi.host, "port": s.bi.port, "dbname": s.bi.dbname, "user": s.bi.user,
        "password": s.bi.password, "ssl": False, "schema-filters-type": "inclusion",
        "schema-filters-patterns": "marts"}}
    for db in _items(client.get("/api/database")):
        if db["name"] == DATABASE_NAME:
            client.put(f"/api/database/{db['id']}", body)
            return db["id"]
    created = client.post("/api/database", {**body, "is_full_sync": True})
    log.info("added the data source %r (role %s)", DATABASE_NAME, s.bi.user)
    return created["id"]


def ensure_collection(client: Client) -> int:
    for coll in _items(client.get("/api/collection")):
        if coll.get("name") == COLLECTION_NAME and not coll.get("archived"):
            return coll["id"]
    return client.post("/api/collection", {"name": COLLECTION_NAME,
                                           "description": "Provisioned from dashboards/spec.yaml"})["id"]


def card_body(card: Card, database_id: int, collection_id: int) -> dict:
    """The card as Metabase's POST/PUT /api/card body: a native query and its display."""
    v = card.visualization
    settings: dict = {"card.title": card.title}
    if card.kind == "number":
        settings["scalar.field"] = v["value"]
    elif card.kind == "table":
        settings["table.columns"] = [{"name": c, "enabled": True} for c in v["columns"]]
    else:
        settings["graph.dimensions"] = [v["x"], v["series"]]
        settings["graph.metrics"] = [v["y"]]
    return {
        "name": card.title,
        "description": card_description(card),
        "collection_id": collection_id,
        "display": DISPLAY[card.kind],
        "dataset_query": {"type": "native", "database": database_id, "native": {"query": card.query}},
        "visualization_settings": settings,
    }


def provision(client: Client, s: Provisioning, spec: Dashboard) -> dict:
    """Make Metabase match the spec; return {"dashboard_id", "card_ids", "url"}."""
    log_in(client, s)
    database_id = ensure_database(client, s)
    collection_id = ensure_collection(client)
    items = _items(client.get(f"/api/collection/{collection_id}/items?models=card&models=dashboard"))
    cards = {spec_key_of(i.get("description")): i["id"] for i in items if i["model"] == "card"}
    card_ids: dict[str, int] = {}
    for card in spec.cards:
        body = card_body(card, database_id, collection_id)
        if card.key in cards:
            card_ids[card.key] = cards[card.key]
            client.put(f"/api/card/{card_ids[card.key]}", body)
        else:
            card_ids[card.key] = client.post("/api/card", body)["id"]
            log.info("created card %r", card.title)
    description = f"{spec.description}\n\nProvisioned from dashboards/spec.yaml (key: {DASHBOARD_KEY})."
    dashboard_id = next((i["id"] for i in items if i["model"] == "dashboard"
                         and f"(key: {DASHBOARD_KEY})" in (i.get("description") or "")), None)
    if dashboard_id is None:
        dashboard_id = client.post("/api/dashboard", {"name": spec.title, "description": description,
                                                      "collection_id": collection_id})["id"]
        log.info("created dashboard %r", spec.title)
    current = {dc["card_id"]: dc["id"] for dc in client.get(f"/api/dashboard/{dashboard_id}").get("dashcards", [])}
    dashcards = []
    for n, card in enumerate(spec.cards, start=1):
        p = card.position
        dashcards.append({"id": current.get(card_ids[card.key], -n), "card_id": card_ids[card.key],
                          "row": p.row, "col": p.col, "size_x": p.width, "size_y": p.height,
                          "parameter_mappings": [], "visualization_settings": {}})
    client.put(f"/api/dashboard/{dashboard_id}", {"name": spec.title, "description": description,
                                                  "dashcards": dashcards})
    url = f"{client.url.rstrip('/')}/dashboard/{dashboard_id}#refresh={spec.refresh_seconds}"
    return {"dashboard_id": dashboard_id, "card_ids": card_ids, "url": url}


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m dashboards.metabase", __doc__, "http://127.0.0.1:3000", 300.0, (MetabaseError,),
                   settings_from_env, lambda url, wait: wait_until_healthy(Client(url), wait),
                   lambda url, settings, spec: provision(Client(url), settings, spec), argv)


if __name__ == "__main__":
    raise SystemExit(main())
