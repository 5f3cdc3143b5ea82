"""A simulated IoT sensor fleet: pure, deterministic under a seed, no I/O.

Each sensor sits in one of the contract's cities and reads

    temperature = city mean + amplitude * cos(2*pi*(local_hour - 15)/24) + sensor bias + noise
    humidity    = city mean - amplitude * cos(...)                       + sensor bias + noise

so temperature peaks mid-afternoon local time and humidity is lowest then. Rare anomalies,
each at a configurable per-reading rate: a heat spike (+12..22 °C for 1-5 readings), a stuck
sensor (repeats its last values for 10-60 readings), a dropout (the sensor skips 10-120 of its
turns, then comes back; its seq does not advance while it is silent, so seq gaps still mean
loss downstream).

Randomness comes only from a `random.Random(seed)`: the same seed, fleet size and timestamps
give the same readings, byte for byte. Faker is used only for sensor metadata (serial, model,
install date, coordinates), seeded from the same seed.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from common.contract import CITIES, SCHEMA_VERSION, City

FLEET_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
TWO_PI_OVER_24 = 2 * math.pi / 24
PEAK_HOUR = 15.0
NOISE_TEMP_C = 0.3
NOISE_HUMIDITY_PCT = 1.0
MODELS = ("TH-100", "TH-200 Pro", "ClimaSense 3", "AeroTemp X")


@dataclass(frozen=True)
class AnomalyRates:
    """Per-reading probabilities of starting each anomaly."""

    spike: float = 0.001
    stuck: float = 0.0005
    dropout: float = 0.0005

    def __post_init__(self) -> None:
        for name in ("spike", "stuck", "dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"anomaly rate {name} must be within [0, 1], got {value}")


@dataclass(frozen=True)
class SensorMetadata:
    """What a device is, from Faker: not part of the event, exported with --describe-fleet."""

    sensor_id: str
    city: str
    serial: str
    model: str
    install_date: str
    lat: float
    lon: float


@dataclass
class Sensor:
    """One device and its mutable state."""

    sensor_id: str
    city: City
    utc_offset_s: float
    temp_bias_c: float
    humidity_bias_pct: float
    seq: int = 0
    spike_left: int = 0
    spike_delta_c: float = 0.0
    stuck_left: int = 0
    last_values: tuple[float, float] = (0.0, 0.0)
    dropout_left: int = 0


@dataclass
class AnomalyCounts:
    """How many anomalies started, and how many readings they touched."""

    spikes: int = 0
    stuck: int = 0
    dropouts: int = 0
    spiked_readings: int = 0
    stuck_readings: int = 0
    skipped_turns: int = 0


_second_cache: list = [None, ""]


def format_event_time(ts: float) -> str:
    """Return ISO-8601 UTC with millisecond precision and a Z offset."""
    ms = int(round(ts * 1000))
    second = ms // 1000
    if _second_cache[0] != second:  # strftime once per second, not per event
        _second_cache[0] = second
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_cache[1]}.{ms % 1000:03d}Z"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def random_uuid4(rng: random.Random) -> str:
    """Return a version-4 UUID string drawn from `rng` (same text as uuid.UUID(..., version=4))."""
    h = "%032x" % ((rng.getrandbits(128) & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def diurnal(local_hour: float) -> float:
    """Return the daily cycle's factor in [-1, 1]: 1 at 15:00 local time, -1 at 03:00."""
    return math.cos(TWO_PI_OVER_24 * (local_hour - PEAK_HOUR))


@dataclass
class Fleet:
    """A fleet of sensors producing valid readings in round-robin order."""

    size: int
    seed: int
    fleet_id: str
    anomalies: AnomalyRates = field(default_factory=AnomalyRates)
    cities: tuple[City, ...] = CITIES

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a fleet needs at least 1 sensor, got {self.size}")
        if not FLEET_ID.fullmatch(self.fleet_id):
            raise ValueError(f"fleet id must be 1-32 of [A-Za-z0-9_-], got {self.fleet_id!r}")
        self.rng = random.Random(self.seed)
        now = datetime.now(UTC)
        offsets = {c.timezone: ZoneInfo(c.timezone).utcoffset(now).total_seconds() for c in self.cities}
        self.sensors = [
            Sensor(
                sensor_id=f"{self.fleet_id}-s{i:04d}",
                city=city,
                utc_offset_s=offsets[city.timezone],
                temp_bias_c=self.rng.gauss(0.0, 0.8),
                humidity_bias_pct=self.rng.gauss(0.0, 3.0),
            )
            for i, city in ((i, self.cities[i % len(self.cities)]) for i in range(self.size))
        ]
        self.counts = AnomalyCounts()
        self._next = 0

    def metadata(self) -> list[SensorMetadata]:
        """Return each sensor's metadata, generated by Faker from the fleet's seed."""
        from faker import Faker

        fake = Faker("pt_BR")
        fake.seed_instance(self.seed)
        return [
            SensorMetadata(
                sensor_id=s.sensor_id, city=s.city.name,
                serial=fake.bothify("SN-####-????").upper(), model=fake.random_element(MODELS),
                install_date=fake.date_between("-5y", "-30d").isoformat(),
                lat=round(s.city.lat + fake.pyfloat(min_value=-0.08, max_value=0.08), 5),
                lon=round(s.city.lon + fake.pyfloat(min_value=-0.08, max_value=0.08), 5),
            )
            for s in self.sensors
        ]

    def _pick(self) -> Sensor:
        """Return the next sensor whose turn it is, skipping those in a dropout."""
        for _ in range(self.size):
            sensor = self.sensors[self._next]
            self._next = (self._next + 1) % self.size
            if sensor.dropout_left > 0:
                sensor.dropout_left -= 1
                self.counts.skipped_turns += 1
                continue
            return sensor
        return sensor  # every sensor is silent: the last one comes back early

    def values_at(self, sensor: Sensor, ts: float, rng: random.Random | None = None) -> tuple[float, float]:
        """Return (temperature_c, humidity_pct) the sensor would read at `ts` without anomalies."""
        rng = rng or self.rng
        local_hour = ((ts + sensor.utc_offset_s) / 3600.0) % 24.0
        cycle = diurnal(local_hour)
        city = sensor.city
        temp = (city.mean_temp_c + city.daily_amplitude_c * cycle + sensor.temp_bias_c
                + rng.gauss(0.0, NOISE_TEMP_C))
        humidity = (city.mean_humidity_pct - city.daily_humidity_amplitude_pct * cycle
                    + sensor.humidity_bias_pct + rng.gauss(0.0, NOISE_HUMIDITY_PCT))
        return temp, min(100.0, max(1.0, humidity))

    def next_reading(self, ts: float) -> dict:
        """Return the next valid reading (an event of the contract) at UNIX time `ts`."""
        sensor = self._pick()
        rng = self.rng
        if sensor.stuck_left > 0:
            sensor.stuck_left -= 1
            self.counts.stuck_readings += 1
            temp, humidity = sensor.last_values
        else:
            temp, humidity = self.values_at(sensor, ts)
            if sensor.spike_left > 0:
                sensor.spike_left -= 1
                temp += sensor.spike_delta_c
                self.counts.spiked_readings += 1
            elif rng.random() < self.anomalies.spike:
                self.counts.spikes += 1
                self.counts.spiked_readings += 1
                sensor.spike_delta_c = rng.uniform(12.0, 22.0)
                sensor.spike_left = rng.randint(1, 5) - 1
                temp += sensor.spike_delta_c
            temp, humidity = round(temp, 2), round(humidity, 1)
            if rng.random() < self.anomalies.stuck:
                self.counts.stuck += 1
                sensor.stuck_left = rng.randint(10, 60)
        sensor.last_values = (temp, humidity)
        if rng.random() < self.anomalies.dropout:
            self.counts.dropouts += 1
            sensor.dropout_left = rng.randint(10, 120)
        sensor.seq += 1
        return {
            "event_id": random_uuid4(rng),
            "sensor_id": sensor.sensor_id,
            "seq": sensor.seq,
            "city": sensor.city.name,
            "temperature_c": temp,
            "humidity_pct": humidity,
            "event_time": format_event_time(ts),
            "schema_version": SCHEMA_VERSION,
        }

    def template(self, ts: float, rng: random.Random) -> dict:
        """Return a valid-looking reading that advances no sensor (a base for bad events).

        It draws from `rng`, not the fleet's generator, so the valid readings are the same
        whatever the bad-event rate."""
        sensor = self.sensors[rng.randrange(self.size)]
        temp, humidity = self.values_at(sensor, ts, rng)
        return {
            "event_id": random_uuid4(rng),
            "sensor_id": sensor.sensor_id,
            "seq": sensor.seq,
            "city": sensor.city.name,
            "temperature_c": round(temp, 2),
            "humidity_pct": round(humidity, 1),
            "event_time": format_event_time(ts),
            "schema_version": SCHEMA_VERSION,
        }
