"""wait_for: polls until a deadline, says what it waited for, and how long when it took long.
The clock is a fake one here: no test waits for the real clock."""

from __future__ import annotations

import logging

import pytest

from common import probes
from common.probes import NotReady, wait_for


@pytest.fixture
def clock(monkeypatch):
    """A clock that moves only when wait_for sleeps between polls."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(probes.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(probes.time, "sleep", sleep)
    return now


def test_a_wait_of_a_second_or_more_is_logged_with_its_length(clock, caplog):
    answers = iter([False, False, True])
    with caplog.at_level(logging.DEBUG, logger="common.probes"):
        took = wait_for("the broker to answer", lambda: next(answers), 10)
    assert took == 2 * probes.POLL_INTERVAL_S == 1.0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "waited 1.0 s for the broker to answer")]


def test_a_quick_wait_is_logged_only_for_debugging(clock, caplog):
    with caplog.at_level(logging.DEBUG, logger="common.probes"):
        assert wait_for("postgres", lambda: True, 10) == 0.0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.DEBUG, "waited 0.0 s for postgres")]


def test_the_deadline_names_what_was_awaited_and_the_probes_last_error(clock):
    def probe() -> bool:
        raise ConnectionRefusedError("111 ECONNREFUSED")

    with pytest.raises(NotReady, match=r"^kafka not ready after 3s \(last error: ConnectionRefusedError: "
                                       r"111 ECONNREFUSED\)$"):
        wait_for("kafka", probe, 3)
    assert clock[0] == 1003.0  # polled until the deadline, not past it
