"""The Superset dashboard in a real headless Chromium, with the running pipeline's data.

Logs in through Superset's login page, opens the dashboard `make up` provisioned from
dashboards/spec.yaml, waits until every chart has rendered, checks each one's content, and
keeps a screenshot in test-artifacts/superset-dashboard.png. Debian's chromium and
chromium-driver are required (`.ci/run` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from common.contract import CITY_NAMES
from common.probes import wait_for
from dashboards.spec import load
from stack.services import superset_dashboard_url

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


@pytest.fixture
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1400",
                "--lang=en-US"):
        options.add_argument(arg)
    # Chromium's shared-memory files (in TMPDIR with --disable-dev-shm-usage) and its profile
    # outlive it: they go into a folder of the test's own, removed afterwards
    with tempfile.TemporaryDirectory(prefix="iot-browser-") as scratch:
        options.add_argument(f"--user-data-dir={scratch}/profile")
        service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": scratch})
        driver = webdriver.Chrome(service=service, options=options)
        try:
            yield driver
        finally:
            driver.quit()


def pipeline_value(stack, query: str):
    """One value from the running pipeline's tables (read only)."""
    from common.postgres import connection

    with connection(stack.pg_params(), "iot-tests") as conn, conn.cursor() as cur:
        cur.execute(query)
        (value,) = cur.fetchone()
    return value


def last_batch_finished(stack) -> datetime:
    """The running pipeline's latest micro-batch."""
    at = pipeline_value(stack, "select max(batch_finished_at) from iot.stream_health")
    assert at is not None, "the running pipeline has no micro-batch yet"
    return at


def rendered(driver, count: int) -> dict[str, dict] | None:
    """Each chart's title and what it shows, once all `count` charts have finished rendering."""
    from selenium.webdriver.common.by import By

    holders = driver.find_elements(By.CSS_SELECTOR, '[data-test="dashboard-component-chart-holder"]')
    if len(holders) != count:
        return None
    charts = {}
    for holder in holders:
        title = holder.find_element(By.CSS_SELECTOR, '[data-test="editable-title"]').text.strip()
        text = holder.text
        if re.search(r"No results|Unexpected error|error", text, re.IGNORECASE):
            charts[title] = {"failed": text}
            continue
        numbers = [e.text for e in holder.find_elements(By.CSS_SELECTOR, ".header-line")]
        rows = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "td")]
                for r in holder.find_elements(By.CSS_SELECTOR, "table tbody tr")]
        canvases = [c for c in holder.find_elements(By.CSS_SELECTOR, "canvas") if c.size["width"] > 100]
        if not (numbers or rows or canvases):
            return None  # still loading
        charts[title] = {"numbers": numbers, "rows": rows, "canvases": len(canvases)}
    return charts


def test_the_dashboard_renders_every_chart_with_the_pipelines_data(stack, browser):
    from selenium.webdriver.common.by import By

    spec = load()
    base = f"http://127.0.0.1:{stack.superset_port}"
    browser.get(f"{base}/login/")
    wait_for("the login form", lambda: browser.find_elements(By.ID, "username"), 60)
    browser.find_element(By.ID, "username").send_keys(stack.superset_admin_user)
    browser.find_element(By.ID, "password").send_keys(stack.superset_admin_password)
    browser.find_element(By.CSS_SELECTOR, '[data-test="login-button"]').click()
    clicked = [time.monotonic()]

    def logged_in() -> bool:
        if "/login" not in browser.current_url:
            return True
        # A click that landed before the page's script took over does nothing (a CI run right
        # after `make up`, both cores busy, waited 60 s on it): submit again while the form
        # still shows, at most every 20 s so that a slow answer is not cut short by a new one.
        buttons = browser.find_elements(By.CSS_SELECTOR, '[data-test="login-button"]')
        if buttons and buttons[0].is_enabled() and time.monotonic() - clicked[0] > 20:
            buttons[0].click()
            clicked[0] = time.monotonic()
        return False

    wait_for("the login to complete", logged_in, 240)

    # Right after `make up` the stream may still be starting under Airflow: wait until it has
    # landed readings of every city in the last minute, so each chart has something to show.
    wait_for("the running pipeline to land a reading of every city in the last minute", lambda: pipeline_value(
        stack, "select count(distinct city) from iot.sensor_readings where event_time > now() - interval '1 minute'"
    ) == len(CITY_NAMES), 420)
    before = last_batch_finished(stack)
    browser.get(superset_dashboard_url(stack))
    latest: list[dict | None] = [None]

    def all_rendered() -> bool:
        latest[0] = rendered(browser, len(spec.cards))
        return latest[0] is not None

    wait_for("every chart to render", all_rendered, 180)
    charts = latest[0]
    after = last_batch_finished(stack)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "superset-dashboard.png"))

    assert set(charts) == {c.title for c in spec.cards}
    assert {t: c["failed"] for t, c in charts.items() if "failed" in c} == {}
    for card in spec.cards:
        shown = charts[card.title]
        if card.kind == "number":
            (value,) = shown["numbers"]
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?", value), (card.title, value)
        elif card.kind in {"line", "bar"}:
            assert shown["canvases"] >= 1, card.title
    board = charts["Cities, latest reading (critical first)"]["rows"]
    # the producer's fleet covers the eight cities; the stream has landed a reading of each
    assert sorted(r[0] for r in board) == sorted(CITY_NAMES)
    assert {r[1] for r in board} <= {"OK", "WARNING", "CRITICAL"}
    severity = [{"CRITICAL": 1, "WARNING": 2, "OK": 3}[r[1]] for r in board]
    assert severity == sorted(severity)
    # the health row shows the pipeline's last micro-batch as it was when the chart queried it,
    # in São Paulo time (rounded to the second)
    (health,) = charts["Pipeline health"]["rows"]
    shown = datetime.fromisoformat(health[0]).replace(tzinfo=SAO_PAULO)
    assert before - timedelta(seconds=1) <= shown <= after + timedelta(seconds=1)
