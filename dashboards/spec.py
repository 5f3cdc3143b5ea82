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
# Bounds no real dashboard reaches: beyond them a value is a typo, and a card a billion rows
# tall would make the overlap check (and the BI tool) grind.
MAX_ROWS = 200
MAX_CARDS = 100
MAX_REFRESH_SECONDS = 86_400
MAX_TEXT = 500  # titles, descriptions
MAX_QUERY = 20_000
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
SPEC_FIELDS = {"title", "description", "refresh_seconds", "cards"}
CARD_FIELDS = {"key", "title", "mart", "query", "visualization", "position"}
POSITION_FIELDS = ("row", "col", "width", "height")
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


def _text(mapping: dict, field: str, where: str, limit: int = MAX_TEXT) -> str:
    value = _require(mapping, field, where, str)
    if not value.strip() or len(value) > limit:
        raise SpecError(f"{where}: field {field!r} must be 1 to {limit} characters, got {len(value.strip())}")
    return value


def _identifier(mapping: dict, field: str, where: str) -> str:
    value = _require(mapping, field, where, str)
    if not IDENTIFIER.fullmatch(value) or len(value) > 63:
        raise SpecError(f"{where}: field {field!r} must be a snake_case name, got {value!r}")
    return value


def _no_unknown_fields(mapping: dict, known, where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in known)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")


def _visualization(c: dict, where: str) -> dict:
    viz = _require(c, "visualization", where, dict)
    kind = viz.get("type")
    if kind not in VISUALIZATIONS:
        raise SpecError(f"{where}: visualization type must be one of {sorted(VISUALIZATIONS)}, got {kind!r}")
    where = f"{where} visualization"
    _no_unknown_fields(viz, {"type", *VISUALIZATIONS[kind]}, where)
    for field in VISUALIZATIONS[kind]:
        if field != "columns":
            _identifier(viz, field, where)
            continue
        columns = _require(viz, field, where, list)
        if not columns or len(columns) > 50:
            raise SpecError(f"{where}: field 'columns' must list 1 to 50 columns, got {len(columns)}")
        for i, column in enumerate(columns):
            _identifier({f"columns[{i}]": column}, f"columns[{i}]", where)
    return viz


def _position(c: dict, where: str) -> Position:
    pos = _require(c, "position", where, dict)
    where = f"{where} position"
    _no_unknown_fields(pos, POSITION_FIELDS, where)
    position = Position(*(_require(pos, f, where, int) for f in POSITION_FIELDS))
    if not (0 <= position.row < MAX_ROWS and 1 <= position.height <= MAX_ROWS - position.row
            and 0 <= position.col and 1 <= position.width and position.col + position.width <= GRID_COLUMNS):
        raise SpecError(f"{where}: {position} is outside the {GRID_COLUMNS}-column, {MAX_ROWS}-row grid")
    return position


def parse(raw: dict) -> Dashboard:
    """Return the validated dashboard; raise SpecError naming the card and the field."""
    if not isinstance(raw, dict):
        raise SpecError("the spec must be a mapping with title, refresh_seconds and cards")
    _no_unknown_fields(raw, SPEC_FIELDS, "spec")
    title = _text(raw, "title", "spec")
    refresh = _require(raw, "refresh_seconds", "spec", int)
    if not 0 < refresh <= MAX_REFRESH_SECONDS:
        raise SpecError(f"spec: refresh_seconds must be positive and at most {MAX_REFRESH_SECONDS}, got {refresh}")
    description = _text(raw, "description", "spec") if "description" in raw else ""
    raw_cards = _require(raw, "cards", "spec", list)
    if len(raw_cards) > MAX_CARDS:
        raise SpecError(f"spec: at most {MAX_CARDS} cards, got {len(raw_cards)}")
    cards: list[Card] = []
    keys: set[str] = set()
    occupied: dict[tuple[int, int], str] = {}
    for i, c in enumerate(raw_cards):
        where = f"card {i}"
        if not isinstance(c, dict):
            raise SpecError(f"{where}: must be a mapping")
        key = _require(c, "key", where, str)
        where = f"card {key!r}"
        if not IDENTIFIER.fullmatch(key):
            raise SpecError(f"{where}: key must be snake_case")
        if key in keys:
            raise SpecError(f"{where}: duplicate key")
        keys.add(key)
        _no_unknown_fields(c, CARD_FIELDS, where)
        viz = _visualization(c, where)
        position = _position(c, where)
        for r in range(position.row, position.row + position.height):
            for col in range(position.col, position.col + position.width):
                if (r, col) in occupied:
                    raise SpecError(f"{where}: overlaps card {occupied[(r, col)]!r}")
                occupied[(r, col)] = key
        query = _text(c, "query", where, MAX_QUERY).strip()
        mart = _identifier(c, "mart", where)
        if f"marts.{mart}" not in query:
            raise SpecError(f"{where}: the query must read its mart marts.{mart}")
        cards.append(Card(key, _text(c, "title", where), mart, query, viz, position))
    if not cards:
        raise SpecError("spec: no cards")
    return Dashboard(title, description, refresh, tuple(cards))


def load(path: Path = SPEC_PATH) -> Dashboard:
    """Read and validate the spec file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    return parse(raw)
