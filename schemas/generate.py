"""Generates ``schemas/json/*.schema.json`` (JSON Schema 2020-12) from the msgspec models.

The input schemas (``event.v1``, ``batch.v1``) are post-processed so that they state the decoder's whole contract:

- every integer field says that it must be written as a JSON integer literal (:data:`INTEGER_LITERAL_RULE`): JSON
  Schema's ``"integer"`` admits ``1.0`` and ``1.7e12`` (it validates the number's value, not how it is written), the
  decoder does not, so the rule can only be stated, not expressed;
- the literal ``v`` gets its ``"type": "integer"``;
- the top-level description lists the record-level rules no keyword can express (:data:`RECORD_RULES`: size,
  nesting depth, encoding, key, channel of an envelope's events, time window).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.alerts import AlertRecord
from schemas.events import INTEGER_LITERAL_RULE, RECORD_RULES, Batch, Record
from schemas.stats import CampaignWindowStats, WindowStats

JSON_DIR = Path(__file__).resolve().parent / "json"
SCHEMAS: dict[str, Any] = {
    "event.v1": Record,
    "batch.v1": Batch,
    "window-stats.v1": WindowStats,
    "campaign-window-stats.v1": CampaignWindowStats,
    "alert.v1": AlertRecord,
}
INPUT_SCHEMAS: frozenset[str] = frozenset({"event.v1", "batch.v1"})
"""The schemas of what producers send, which the decoder enforces."""


def render(name: str) -> str:
    schema = msgspec.json.schema(SCHEMAS[name])
    if name in INPUT_SCHEMAS:
        schema = _input_contract(name, schema)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _input_contract(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    for definition in schema.get("$defs", {}).values():
        for field in definition.get("properties", {}).values():
            _integer_rule(field)
    what = "One record value of the events topic: a single event or a batch envelope."
    if name == "batch.v1":
        what = "A batch envelope: many events of one livestream in one record value of the events topic."
    return {**schema, "description": f"{what} {RECORD_RULES}"}


def _integer_rule(field: dict[str, Any]) -> None:
    enum = field.get("enum")
    if "type" not in field and enum and all(type(value) is int for value in enum):
        field["type"] = "integer"
    if field.get("type") == "integer":
        described = field.get("description")
        field["description"] = f"{described}. {INTEGER_LITERAL_RULE}" if described else INTEGER_LITERAL_RULE


def write_json_schemas(check: bool = False) -> list[Path]:
    """Write every schema file; with ``check`` write nothing. Returns the files that were (or would be) changed."""
    changed: list[Path] = []
    JSON_DIR.mkdir(exist_ok=True)
    for name in SCHEMAS:
        path = JSON_DIR / f"{name}.schema.json"
        text = render(name)
        if not path.exists() or path.read_text() != text:
            changed.append(path)
            if not check:
                path.write_text(text)
    return changed
