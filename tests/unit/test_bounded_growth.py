"""What grows with the stream's uptime has a bound (issue 14, point 5): the parts that need no
running stack. The always-running task's log is one of them."""

from __future__ import annotations

from jobs.stream import BatchLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_batches(batch_log: BatchLog, clock: Clock, count: int, every_s: float, seconds: float = 0.4,
                replays: frozenset[int] = frozenset(), slow: frozenset[int] = frozenset()):
    notable, summaries = [], []
    for i in range(count):
        clock.now += every_s
        worth, summary = batch_log.add(250, 249, 1, 249, 0, behind=3, seconds=20.0 if i in slow else seconds,
                                       replay=i in replays)
        if worth:
            notable.append(i)
        if summary:
            summaries.append(summary)
    return notable, summaries


def test_the_stream_log_grows_with_time_not_with_batches():
    clock = Clock()
    batch_log = BatchLog(every_s=300, slow_s=10, clock=clock)
    # a day at a 1 s trigger: 86,400 batches
    notable, summaries = run_batches(batch_log, clock, 86_400, every_s=1.0)
    assert notable == [0]  # the first batch only
    assert len(summaries) == 288  # one per 300 s
    assert summaries[0] == ("last 300 s: 300 batches, in=75000 valid=74700 quarantined=300 inserted=74700 "
                            "duplicates=0, mean 0.40 s, slowest 0.40 s, behind=3 (each batch: stream_health)")


def test_a_summary_counts_only_its_own_batches_and_names_the_slowest():
    clock = Clock()
    batch_log = BatchLog(every_s=60, slow_s=10, clock=clock)
    notable, summaries = run_batches(batch_log, clock, 120, every_s=1.0, slow=frozenset({70}),
                                     replays=frozenset({5}))
    assert notable == [0, 5, 70]  # first, replayed, slow
    assert len(summaries) == 2
    assert summaries[0].startswith("last 60 s: 60 batches, in=15000 ")
    assert "slowest 0.40 s" in summaries[0]
    assert summaries[1].startswith("last 60 s: 60 batches, in=15000 ")
    assert "slowest 20.00 s" in summaries[1]


def test_summary_seconds_zero_logs_every_batch():
    clock = Clock()
    notable, summaries = run_batches(BatchLog(every_s=0, clock=clock), clock, 50, every_s=1.0)
    assert notable == list(range(50))
    assert summaries == []
