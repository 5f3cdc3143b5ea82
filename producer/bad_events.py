"""Bad events injected on purpose to exercise the pipeline's validation and de-duplication.

Each category produces exactly one defect on an otherwise valid reading, so the streaming
job's tests can assert exactly which rule a category fails:

| category            | what is sent                                                    |
|---------------------|-----------------------------------------------------------------|
| malformed_json      | a reading's JSON cut short (not parseable)                      |
| wrong_type          | temperature_c as a string ("hot")                               |
| missing_field       | a reading without one required field (chosen at random)          |
| out_of_range        | temperature_c outside [-50, 70] or humidity_pct outside [0, 100] |
| unknown_city        | city "Atlantis"                                                 |
| future_timestamp    | event_time one day ahead of the send time                       |
| oversized           | a reading padded past the contract's MAX_PAYLOAD_BYTES           |
| duplicate_event_id  | the last valid reading sent, again, byte for byte               |
| invalid_utf8        | a reading whose sensor_id holds bytes that are not UTF-8         |

A bad event advances no sensor's seq (it is extra, not a lost reading), and every category
but duplicate_event_id carries a fresh event_id.
"""

from __future__ import annotations

import random

from common.contract import FIELD_NAMES, MAX_PAYLOAD_BYTES
from producer.serialization import serialize
from producer.simulation import format_event_time

BAD_CATEGORIES: tuple[str, ...] = (
    "malformed_json",
    "wrong_type",
    "missing_field",
    "out_of_range",
    "unknown_city",
    "future_timestamp",
    "oversized",
    "duplicate_event_id",
    "invalid_utf8",
)
UNKNOWN_CITY = "Atlantis"
FUTURE_OFFSET_S = 86_400


def make_bad_event(category: str, template: dict, ts: float, rng: random.Random) -> bytes:
    """Return the bytes of a bad event of `category` built from a valid `template` reading.

    duplicate_event_id is not built here: the caller re-sends its last valid reading.
    """
    event = dict(template)
    if category == "malformed_json":
        text = serialize(event)
        return text[: len(text) - rng.randint(1, 25)]
    if category == "wrong_type":
        event["temperature_c"] = "hot"
    elif category == "missing_field":
        del event[rng.choice(FIELD_NAMES)]
    elif category == "out_of_range":
        if rng.random() < 0.5:
            event["temperature_c"] = round(rng.choice((rng.uniform(71, 150), rng.uniform(-120, -51))), 2)
        else:
            event["humidity_pct"] = round(rng.uniform(100.5, 180), 1)
    elif category == "unknown_city":
        event["city"] = UNKNOWN_CITY
    elif category == "future_timestamp":
        event["event_time"] = format_event_time(ts + FUTURE_OFFSET_S)
    elif category == "oversized":
        event["firmware_dump"] = "x" * (MAX_PAYLOAD_BYTES + 256)
    elif category == "invalid_utf8":
        event["sensor_id"] = event["sensor_id"] + "@@NOT_UTF8@@"
        # 0xFF and 0xFE never occur in UTF-8; 0xC3 alone is a truncated sequence.
        return serialize(event).replace(b"@@NOT_UTF8@@", b"\xff\xfe\xc3")
    else:
        raise ValueError(f"unknown bad-event category {category!r}; known: {', '.join(BAD_CATEGORIES)}")
    return serialize(event)
