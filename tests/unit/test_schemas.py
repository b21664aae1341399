from __future__ import annotations

import json

from schemas.generate import JSON_DIR, SCHEMAS, render, write_json_schemas


def test_json_schema_files_are_current() -> None:
    stale = write_json_schemas(check=True)
    assert stale == [], f"run `livestream schemas` to regenerate: {stale}"


def test_event_schema_names_every_event_type_and_integer_money() -> None:
    schema = json.loads((JSON_DIR / "event.v1.schema.json").read_text())
    defs = schema["$defs"]
    assert {"View", "Leave", "Comment", "Like", "Share", "AddToCart", "Order", "Batch"} <= set(defs)
    assert defs["Order"]["properties"]["amount_vnd"]["type"] == "integer"
    assert set(SCHEMAS) == {p.name.removesuffix(".schema.json") for p in JSON_DIR.glob("*.schema.json")}
    assert render("event.v1") == (JSON_DIR / "event.v1.schema.json").read_text()
