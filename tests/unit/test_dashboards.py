"""The dashboard spec, and the Metabase provisioner against a FAKE Metabase (tests/unit/
fake_metabase.py: Metabase cannot be installed here; the fake follows its documented API)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from common.env import Env
from dashboards import metabase
from dashboards.spec import SPEC_PATH, SpecError, load, parse
from tests.unit.fake_metabase import FakeMetabase

ENV = {"METABASE_ADMIN_EMAIL": "ops@example.com", "METABASE_ADMIN_PASSWORD": "s3cret-pass-1",
       "POSTGRES_HOST": "postgres", "POSTGRES_PORT": "5432", "POSTGRES_DB": "iot",
       "BI_DB_USER": "iot_bi", "BI_DB_PASSWORD": "bi-pass-2"}


@pytest.fixture
def fake():
    server = FakeMetabase().start()
    yield server
    server.stop()


def run(fake: FakeMetabase, env: dict | None = None) -> dict:
    client = metabase.Client(fake.url)
    return metabase.provision(client, metabase.settings_from_env(Env(env or ENV)), load())


# ---- the spec ---------------------------------------------------------------------------------

def test_the_spec_has_the_demos_three_views_and_the_pipelines_health():
    spec = load()
    assert spec.refresh_seconds == 60
    assert [c.key for c in spec.cards] == ["mean_temperature", "mean_humidity", "readings_per_second",
                                           "last_batch_age", "city_board", "temperature_per_minute",
                                           "hourly_readings", "pipeline_health"]
    assert Counter(c.kind for c in spec.cards) == {"number": 4, "table": 2, "line": 1, "bar": 1}
    assert {c.mart for c in spec.cards} == {"current_kpis", "pipeline_health", "city_board",
                                            "temperature_per_minute", "hourly_city"}


def raw_spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["cards"][1]["position"].update(col=3), "card 'mean_humidity': overlaps card 'mean_temperature'"),
    (lambda r: r["cards"][0]["position"].update(col=20), "outside the 24-column, 200-row grid"),
    (lambda r: r["cards"][0]["visualization"].update(type="pie"), "visualization type must be one of"),
    (lambda r: r["cards"][5]["visualization"].pop("series"),
     "'temperature_per_minute' visualization: missing field 'series'"),
    (lambda r: r["cards"][0].update(mart="city_board"), "the query must read its mart marts.city_board"),
    (lambda r: r["cards"][1].update(key="mean_temperature"), "card 'mean_temperature': duplicate key"),
    (lambda r: r.update(refresh_seconds=0), "refresh_seconds must be positive"),
    # wrong types
    (lambda r: r.update(refresh_seconds="60"), "spec: field 'refresh_seconds' must be int, got '60'"),
    (lambda r: r.update(refresh_seconds=True), "spec: field 'refresh_seconds' must be int, got True"),
    (lambda r: r["cards"][0]["position"].update(width=6.5), "card 'mean_temperature' position: field 'width' must "
                                                            "be int, got 6.5"),
    (lambda r: r["cards"][4]["visualization"].update(columns=["city", 7]),
     "card 'city_board' visualization: field 'columns[1]' must be str, got 7"),
    (lambda r: r["cards"][4]["visualization"].update(columns="city"),
     "card 'city_board' visualization: field 'columns' must be list, got 'city'"),
    (lambda r: r["cards"][0].update(title=["a"]), "card 'mean_temperature': field 'title' must be str"),
    (lambda r: r["cards"][0].update(mart="current kpis; drop"), "card 'mean_temperature': field 'mart' must be a "
                                                                "snake_case name"),
    (lambda r: r.update(description=3), "spec: field 'description' must be str, got 3"),
    (lambda r: r["cards"][0]["visualization"].update(value=None), "card 'mean_temperature' visualization: field "
                                                                  "'value' must be str, got None"),
    # absurd sizes
    (lambda r: r["cards"][0]["position"].update(height=10**9), "card 'mean_temperature' position: "
                                                               "Position(row=0, col=0, width=6, height=1000000000) "
                                                               "is outside the 24-column, 200-row grid"),
    (lambda r: r["cards"][0]["position"].update(row=-1), "card 'mean_temperature' position: Position(row=-1"),
    (lambda r: r.update(refresh_seconds=10**12), "refresh_seconds must be positive and at most 86400"),
    (lambda r: r["cards"][0].update(title="x" * 501), "card 'mean_temperature': field 'title' must be 1 to 500 "
                                                      "characters, got 501"),
    (lambda r: r["cards"][0].update(title="  "), "field 'title' must be 1 to 500 characters, got 0"),
    (lambda r: r["cards"][4]["visualization"].update(columns=[]), "field 'columns' must list 1 to 50 columns, "
                                                                  "got 0"),
    (lambda r: r.update(cards=r["cards"] * 13), "spec: at most 100 cards, got 104"),
    # misspelt fields
    (lambda r: r["cards"][0].update(positon={}), "card 'mean_temperature': unknown field(s) 'positon'"),
    (lambda r: r["cards"][0]["visualization"].update(colour="red"),
     "card 'mean_temperature' visualization: unknown field(s) 'colour'"),
])
def test_a_malformed_spec_is_refused_naming_the_card_and_field(change, message):
    raw = raw_spec()
    change(raw)
    with pytest.raises(SpecError, match=re.escape(message)):
        parse(raw)


# ---- Metabase provisioning against the fake -------------------------------------------------

def test_first_run_sets_up_metabase_and_builds_the_dashboard_from_the_spec(fake):
    spec = load()
    result = run(fake)
    assert fake.users == {"ops@example.com": "s3cret-pass-1"}
    assert fake.setup_token is None
    (db,) = fake.databases.values()
    assert (db["engine"], db["name"]) == ("postgres", "IoT lakehouse (marts)")
    assert {k: db["details"][k] for k in ("host", "port", "dbname", "user", "password")} == {
        "host": "postgres", "port": 5432, "dbname": "iot", "user": "iot_bi", "password": "bi-pass-2"}
    (collection,) = fake.collections.values()
    cards = {c["name"]: c for c in fake.cards.values()}
    assert sorted(cards) == sorted(c.title for c in spec.cards)
    for card in spec.cards:
        got = cards[card.title]
        assert got["dataset_query"] == {"type": "native", "database": db["id"], "native": {"query": card.query}}
        assert got["display"] == {"number": "scalar", "table": "table", "line": "line", "bar": "bar"}[card.kind]
        assert got["collection_id"] == collection["id"]
    line = cards["Temperature per minute per city, last hour (°C)"]["visualization_settings"]
    assert (line["graph.dimensions"], line["graph.metrics"]) == (["minute_local", "city"], ["mean_temperature_c"])
    (dashboard,) = fake.dashboards.values()
    assert dashboard["name"] == spec.title
    placed = {fake.cards[dc["card_id"]]["name"]: (dc["row"], dc["col"], dc["size_x"], dc["size_y"])
              for dc in dashboard["dashcards"]}
    assert placed == {c.title: (c.position.row, c.position.col, c.position.width, c.position.height)
                      for c in spec.cards}
    assert result["url"] == f"{fake.url}/dashboard/{dashboard['id']}#refresh=60"


def test_a_second_run_creates_nothing_and_changes_no_id(fake):
    run(fake)
    before = ({i: dict(c) for i, c in fake.cards.items()}, [dict(dc) for dc in fake.dashboards[
        next(iter(fake.dashboards))]["dashcards"]], set(fake.databases), set(fake.collections))
    fake.requests.clear()
    run(fake)
    posts = [path for method, path in fake.requests if method == "POST"]
    assert posts == ["/api/session"]  # a login, nothing created
    after = ({i: dict(c) for i, c in fake.cards.items()}, [dict(dc) for dc in fake.dashboards[
        next(iter(fake.dashboards))]["dashcards"]], set(fake.databases), set(fake.collections))
    assert after == before


def test_a_changed_query_in_the_spec_updates_the_card_in_place(fake):
    run(fake)
    ids = set(fake.cards)
    raw = raw_spec()
    raw["cards"][0]["query"] = "select round(mean_temperature_c, 1) as mean_temperature_c from marts.current_kpis"
    client = metabase.Client(fake.url)
    metabase.provision(client, metabase.settings_from_env(Env(ENV)), parse(raw))
    assert set(fake.cards) == ids
    assert [c["dataset_query"]["native"]["query"] for c in fake.cards.values()
            if c["name"].startswith("Mean temperature")] == [raw["cards"][0]["query"]]


def test_wrong_admin_password_fails_with_metabases_answer(fake, capsys, monkeypatch):
    run(fake)
    for name, value in {**ENV, "METABASE_ADMIN_PASSWORD": "wrong-pass-9"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IOT_ENV_FILE", "/dev/null")
    assert metabase.main(["--url", fake.url, "--wait", "5"]) == 1
    err = capsys.readouterr().err
    assert "POST /api/session: HTTP 401" in err
    assert "did not match stored password" in err


def test_a_weak_admin_password_is_refused_at_setup(fake, capsys, monkeypatch):
    for name, value in {**ENV, "METABASE_ADMIN_PASSWORD": "short"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IOT_ENV_FILE", "/dev/null")
    assert metabase.main(["--url", fake.url, "--wait", "5"]) == 1
    assert "POST /api/setup: HTTP 400" in capsys.readouterr().err


def test_missing_password_names_the_variable(fake, capsys, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("METABASE_ADMIN_PASSWORD")
    monkeypatch.setenv("IOT_ENV_FILE", "/dev/null")
    assert metabase.main(["--url", fake.url, "--wait", "5"]) == 1
    assert "METABASE_ADMIN_PASSWORD is not set" in capsys.readouterr().err


def test_bad_wait_argument_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        metabase.main(["--wait", "-1"])
    assert exc.value.code == 2
    assert "argument --wait: must be >= 0" in capsys.readouterr().err


def test_unreachable_metabase_times_out_with_its_address(capsys, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IOT_ENV_FILE", "/dev/null")
    assert metabase.main(["--url", "http://127.0.0.1:9", "--wait", "0"]) == 1
    assert "Metabase at http://127.0.0.1:9 not healthy within 0 s" in capsys.readouterr().err


def test_a_renamed_card_and_dashboard_are_updated_not_duplicated(fake):
    run(fake)
    ids = (set(fake.cards), set(fake.dashboards))
    raw = raw_spec()
    raw["title"] = "Sensors"
    raw["cards"][2]["title"] = "Events per second"
    metabase.provision(metabase.Client(fake.url), metabase.settings_from_env(Env(ENV)), parse(raw))
    assert (set(fake.cards), set(fake.dashboards)) == ids
    assert "Events per second" in {c["name"] for c in fake.cards.values()}
    assert [d["name"] for d in fake.dashboards.values()] == ["Sensors"]
