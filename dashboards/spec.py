"""The dashboard spec (dashboards/spec.yaml): loading and validation, shared by both BI tools.

Stdlib plus PyYAML only: it runs in the project's venv (Metabase provisioner) and in
Superset's own venv alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

SPEC_PATH = Path(__file__).resolve().parent / "spec.yaml"
GRID_COLUMNS = 24
VISUALIZATIONS = {"number": ("value",), "table": ("columns",), "line": ("x", "y", "series"),
                  "bar": ("x", "y", "series")}


DASHBOARD_KEY = "iot-monitoring"
CARD_MARKER = re.compile(r"^spec card ([a-z][a-z0-9_]*);")


def card_description(card: Card) -> str:
    """The description both BI tools store on a card: provisioners find their cards by it, so a
    renamed title updates the card instead of adding one."""
    return f"spec card {card.key}; reads marts.{card.mart}"


def spec_key_of(description: str | None) -> str | None:
    """Return the spec key in a description written by card_description, else None."""
    m = CARD_MARKER.match(description or "")
    return m.group(1) if m else None


class SpecError(ValueError):
    """The spec is malformed; the message names the card and the field."""


@dataclass(frozen=True)
class Position:
    row: int
    col: int
    width: int
    height: int


@dataclass(frozen=True)
class Card:
    key: str
    title: str
    mart: str
    query: str
    visualization: dict
    position: Position

    @property
    def kind(self) -> str:
        return self.visualization["type"]

    def columns(self) -> list[str]:
        """Every column the visualization names, in order."""
        v = self.visualization
        if self.kind == "number":
            return [v["value"]]
        if self.kind == "table":
            return list(v["columns"])
        return [v["x"], v["series"], v["y"]]


@dataclass(frozen=True)
class Dashboard:
    title: str
    description: str
    refresh_seconds: int
    cards: tuple[Card, ...]


def _require(mapping: dict, field: str, where: str, kind: type):
    if field not in mapping:
        raise SpecError(f"{where}: missing field {field!r}")
    value = mapping[field]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise SpecError(f"{where}: field {field!r} must be {kind.__name__}, got {value!r}")
    return value


def parse(raw: dict) -> Dashboard:
    """Return the validated dashboard; raise SpecError naming what is wrong."""
    if not isinstance(raw, dict):
        raise SpecError("the spec must be a mapping with title, refresh_seconds and cards")
    title = _require(raw, "title", "spec", str)
    refresh = _require(raw, "refresh_seconds", "spec", int)
    if refresh <= 0:
        raise SpecError(f"spec: refresh_seconds must be positive, got {refresh}")
    cards: list[Card] = []
    keys: set[str] = set()
    occupied: dict[tuple[int, int], str] = {}
    for i, c in enumerate(_require(raw, "cards", "spec", list)):
        where = f"card {i}"
        if not isinstance(c, dict):
            raise SpecError(f"{where}: must be a mapping")
        key = _require(c, "key", where, str)
        where = f"card {key!r}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise SpecError(f"{where}: key must be snake_case")
        if key in keys:
            raise SpecError(f"{where}: duplicate key")
        keys.add(key)
        viz = _require(c, "visualization", where, dict)
        kind = viz.get("type")
        if kind not in VISUALIZATIONS:
            raise SpecError(f"{where}: visualization type must be one of {sorted(VISUALIZATIONS)}, got {kind!r}")
        for field in VISUALIZATIONS[kind]:
            _require(viz, field, f"{where} visualization", list if field == "columns" else str)
        pos = _require(c, "position", where, dict)
        position = Position(*(_require(pos, f, f"{where} position", int) for f in ("row", "col", "width", "height")))
        if position.row < 0 or position.col < 0 or position.width < 1 or position.height < 1 \
                or position.col + position.width > GRID_COLUMNS:
            raise SpecError(f"{where}: position {position} is outside the {GRID_COLUMNS}-column grid")
        for r in range(position.row, position.row + position.height):
            for col in range(position.col, position.col + position.width):
                if (r, col) in occupied:
                    raise SpecError(f"{where}: overlaps card {occupied[(r, col)]!r}")
                occupied[(r, col)] = key
        query = _require(c, "query", where, str).strip()
        mart = _require(c, "mart", where, str)
        if f"marts.{mart}" not in query:
            raise SpecError(f"{where}: the query must read its mart marts.{mart}")
        cards.append(Card(key, _require(c, "title", where, str), mart, query, viz, position))
    if not cards:
        raise SpecError("spec: no cards")
    return Dashboard(title, str(raw.get("description", "")), refresh, tuple(cards))


def load(path: Path = SPEC_PATH) -> Dashboard:
    """Read and validate the spec file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    return parse(raw)
