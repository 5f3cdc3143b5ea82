"""Readiness probes and deadline-bounded waiting. No fixed sleeps: poll a condition until a
deadline, and say what was being waited for when it passes."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

POLL_INTERVAL_S = 0.5
log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """A service did not become ready before its deadline."""


def wait_for(
    what: str,
    probe: Callable[[], bool],
    timeout_s: float,
    *,
    on_fail: Callable[[], str] | None = None,
) -> float:
    """Poll `probe` until it returns True; return the seconds it took.

    Raise NotReady naming `what` (plus `on_fail()`'s diagnostics) when `timeout_s` passes.
    A probe that raises counts as not ready; its last error is reported.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last_error = ""
    while True:
        try:
            if probe():
                took = time.monotonic() - start
                # where a slow test's (or `make up`'s) time went; the quick ones only when debugging
                log.log(logging.INFO if took >= 1.0 else logging.DEBUG, "waited %.1f s for %s", took, what)
                return took
        except Exception as exc:  # a probe failing is the normal "not yet" answer
            last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            extra = f"\n{on_fail()}" if on_fail else ""
            raise NotReady(f"{what} not ready after {timeout_s:.0f}s{detail}{extra}")
        # Polling interval of a deadline-bounded wait, not a wait for readiness itself.
        time.sleep(min(POLL_INTERVAL_S, deadline - now))


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Return whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    """Return whether GET url answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def http_json(url: str, timeout_s: float = 5.0) -> dict:
    """Return the JSON body of GET url."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read().decode())


def airflow_health(base_url: str) -> dict[str, str]:
    """Return each Airflow component's status from /api/v2/monitor/health."""
    body = http_json(f"{base_url}/api/v2/monitor/health")
    return {component: info.get("status", "unknown") for component, info in body.items()}
