"""A FAKE Metabase: an in-memory HTTP server answering exactly the endpoints the provisioner
(dashboards/metabase.py) uses, shaped after Metabase's API documentation.

Metabase cannot be installed on our machines (a vendor jar download or a Docker image, neither
reachable), so the provisioner is tested against this fake, and docs/dashboards.md says so. What it
enforces, as Metabase does: the session header on every call but health, session properties,
setup and login; the one-time setup token; the password rule (at least 6 characters with a
digit, Metabase's default "normal" complexity); the required fields of each body (400 with
{"errors": {field: message}}); card and dashcard ids that exist; PUT /api/dashboard/:id with
`dashcards` replacing the dashboard's cards (negative ids are new ones).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeMetabase:
    """State of the fake; `url` once started. `requests` logs (method, path) of every call."""

    def __init__(self) -> None:
        self.setup_token: str | None = str(uuid.uuid4())
        self.users: dict[str, str] = {}
        self.sessions: set[str] = set()
        self.databases: dict[int, dict] = {}
        self.collections: dict[int, dict] = {}
        self.cards: dict[int, dict] = {}
        self.dashboards: dict[int, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeMetabase:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                url = urlparse(self.path)
                fake.requests.append((method, url.path))
                status, answer = fake.route(method, url.path, parse_qs(url.query), body,
                                            self.headers.get("X-Metabase-Session"))
                self._answer(status, answer)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- routing ---------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body, session: str | None):
        if (method, path) == ("GET", "/api/health"):
            return 200, {"status": "ok"}
        if (method, path) == ("GET", "/api/session/properties"):
            return 200, {"has-user-setup": bool(self.users), "setup-token": self.setup_token}
        if (method, path) == ("POST", "/api/setup"):
            return self.setup(body)
        if (method, path) == ("POST", "/api/session"):
            return self.login(body)
        if session not in self.sessions:
            return 401, "Unauthenticated"
        m = re.fullmatch(r"/api/(database|card|dashboard|collection)(?:/(\d+))?(/items)?", path)
        if not m:
            return 404, "API endpoint does not exist."
        kind, ident, items = m.group(1), m.group(2), m.group(3)
        store = {"database": self.databases, "card": self.cards, "dashboard": self.dashboards,
                 "collection": self.collections}[kind]
        if ident is not None and int(ident) not in store:
            return 404, "Not found."
        if kind == "collection" and items:
            return self.collection_items(int(ident), query.get("models", []))
        if method == "GET" and ident is None:
            rows = list(store.values())
            if kind == "database":
                return 200, {"data": rows, "total": len(rows)}
            if kind == "collection":
                return 200, [{"id": "root", "name": "Our analytics"}, *rows]
            return 200, rows
        if method == "GET":
            return 200, store[int(ident)]
        if method == "POST" and ident is None:
            return self.create(kind, store, body)
        if method == "PUT" and ident is not None:
            return self.update(kind, store, int(ident), body)
        return 405, "Method not allowed."

    @staticmethod
    def _missing(body, *fields) -> dict:
        return {f: "value must be a non-blank string." if f == "name" else "value may not be nil."
                for f in fields if not isinstance(body, dict) or body.get(f) in (None, "")}

    def setup(self, body):
        if self.setup_token is None:
            return 403, "The /api/setup route can only be used to create the first user."
        if body.get("token") != self.setup_token:
            return 403, "Token does not match the setup token."
        user = body.get("user") or {}
        errors = self._missing(user, "email", "password", "first_name", "last_name")
        password = user.get("password") or ""
        if not errors and (len(password) < 6 or not re.search(r"\d", password)):
            errors["password"] = "password is too common."
        if errors:
            return 400, {"errors": errors}
        self.users[user["email"]] = password
        self.setup_token = None
        return 200, {"id": self._session()}

    def login(self, body):
        if self.users.get(body.get("username")) != body.get("password"):
            return 401, {"errors": {"password": "did not match stored password"}}
        return 200, {"id": self._session()}

    def _session(self) -> str:
        sid = str(uuid.uuid4())
        self.sessions.add(sid)
        return sid

    def collection_items(self, collection_id: int, models: list[str]):
        rows = [{"id": i, "name": o["name"], "description": o.get("description"), "model": kind}
                for kind, store in (("card", self.cards), ("dashboard", self.dashboards))
                for i, o in store.items() if o.get("collection_id") == collection_id and (not models or kind in models)]
        return 200, {"data": rows, "total": len(rows)}

    def _check(self, kind: str, body) -> dict:
        required = {"database": ("engine", "name", "details"), "card": ("name", "dataset_query", "display",
                    "visualization_settings"), "dashboard": ("name",), "collection": ("name",)}[kind]
        errors = self._missing(body, *required)
        if kind == "card" and not errors:
            q = body["dataset_query"]
            if q.get("database") not in self.databases:
                errors["dataset_query"] = "database does not exist."
            elif q.get("type") != "native" or not (q.get("native") or {}).get("query"):
                errors["dataset_query"] = "a native query needs native.query."
        return errors

    def create(self, kind: str, store: dict, body):
        errors = self._check(kind, body)
        if errors:
            return 400, {"errors": errors}
        ident = next(self._ids)
        store[ident] = {**body, "id": ident, **({"dashcards": []} if kind == "dashboard" else {})}
        return 200, self._public(kind, store[ident])

    def update(self, kind: str, store: dict, ident: int, body):
        if kind != "dashboard":
            errors = {f: e for f, e in self._check(kind, {**store[ident], **body}).items()}
            if errors:
                return 400, {"errors": errors}
            store[ident].update(body)
            return 200, self._public(kind, store[ident])
        dashboard = store[ident]
        if "dashcards" in body:
            current = {dc["id"] for dc in dashboard["dashcards"]}
            new = []
            for dc in body["dashcards"]:
                if dc.get("card_id") not in self.cards:
                    return 400, {"errors": {"dashcards": f"card {dc.get('card_id')} does not exist."}}
                if dc["id"] >= 0 and dc["id"] not in current:
                    return 400, {"errors": {"dashcards": f"dashcard {dc['id']} is not on this dashboard."}}
                new.append({**dc, "id": dc["id"] if dc["id"] >= 0 else next(self._ids)})
            dashboard["dashcards"] = new
        dashboard.update({k: v for k, v in body.items() if k != "dashcards"})
        return 200, dashboard

    @staticmethod
    def _public(kind: str, obj: dict) -> dict:
        if kind == "database":
            return {**obj, "details": {**obj["details"], "password": "**MetabasePass**"}}
        return obj
