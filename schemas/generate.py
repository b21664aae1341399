"""Generates ``schemas/json/*.schema.json`` (JSON Schema 2020-12) from the msgspec models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.alerts import AlertRecord
from schemas.events import Batch, Record
from schemas.stats import CampaignWindowStats, WindowStats

JSON_DIR = Path(__file__).resolve().parent / "json"
SCHEMAS: dict[str, Any] = {
    "event.v1": Record,
    "batch.v1": Batch,
    "window-stats.v1": WindowStats,
    "campaign-window-stats.v1": CampaignWindowStats,
    "alert.v1": AlertRecord,
}


def render(name: str) -> str:
    schema = msgspec.json.schema(SCHEMAS[name])
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


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
