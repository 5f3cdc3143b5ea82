"""The producer's record stream: valid readings from the fleet, with bad events injected."""

from __future__ import annotations

import random
from collections import Counter
from typing import NamedTuple

from producer.bad_events import BAD_CATEGORIES, make_bad_event
from producer.serialization import serialize_reading
from producer.simulation import Fleet

VALID = "valid"


class Record(NamedTuple):
    """One Kafka record to send: key (sensor_id), value, and what kind of event it is."""

    key: bytes
    value: bytes
    kind: str  # VALID or a bad-event category
    event_id: str | None


class EventStream:
    """Valid readings, each slot replaced by a bad event with probability `bad_rate`."""

    def __init__(self, fleet: Fleet, bad_rate: float = 0.0,
                 categories: tuple[str, ...] = BAD_CATEGORIES) -> None:
        if not 0.0 <= bad_rate <= 1.0:
            raise ValueError(f"bad_rate must be within [0, 1], got {bad_rate}")
        unknown = set(categories) - set(BAD_CATEGORIES)
        if unknown:
            raise ValueError(f"unknown bad-event categories {sorted(unknown)}; "
                             f"known: {', '.join(BAD_CATEGORIES)}")
        if bad_rate > 0 and not categories:
            raise ValueError("bad_rate > 0 needs at least one bad-event category")
        self.fleet = fleet
        self.bad_rate = bad_rate
        self.categories = tuple(categories)
        # A generator of its own: the valid readings do not depend on the bad-event rate.
        self.rng = random.Random(fleet.seed * 7919 + 17)
        self.counts: Counter[str] = Counter()
        self._last_valid: Record | None = None

    def next_record(self, ts: float) -> Record:
        """Return the record for the slot at UNIX time `ts`."""
        if self.bad_rate and self.rng.random() < self.bad_rate:
            category = self.rng.choice(self.categories)
            if category == "duplicate_event_id":
                if self._last_valid is not None:
                    self.counts[category] += 1
                    last = self._last_valid
                    return Record(last.key, last.value, category, last.event_id)
            else:
                template = self.fleet.template(ts, self.rng)
                self.counts[category] += 1
                return Record(template["sensor_id"].encode(),
                              make_bad_event(category, template, ts, self.rng), category, None)
        event = self.fleet.next_reading(ts)
        record = Record(event["sensor_id"].encode(), serialize_reading(event), VALID, event["event_id"])
        self.counts[VALID] += 1
        self._last_valid = record
        return record
