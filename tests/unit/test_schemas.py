from __future__ import annotations

import json

from schemas.events import (
    INTEGER_LITERAL_RULE,
    MAX_BATCH_EVENTS,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    MAX_TS_MS,
    RECORD_RULES,
)
from schemas.generate import INPUT_SCHEMAS, JSON_DIR, SCHEMAS, render, write_json_schemas


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


def test_input_schemas_state_every_limit_and_rule() -> None:
    for name in INPUT_SCHEMAS:
        schema = json.loads((JSON_DIR / f"{name}.schema.json").read_text())
        assert schema["description"].endswith(RECORD_RULES)
        assert str(MAX_RECORD_BYTES) in RECORD_RULES and f"at most {MAX_JSON_DEPTH} levels" in RECORD_RULES
        defs = schema["$defs"]
        assert defs["Batch"]["properties"]["events"]["maxItems"] == MAX_BATCH_EVENTS
        integers = 0
        for definition in defs.values():
            assert definition["properties"]["v"] == {
                "default": 1,
                "description": INTEGER_LITERAL_RULE,
                "enum": [1],
                "type": "integer",
            }
            if "ts_ms" in definition["properties"]:
                assert definition["properties"]["ts_ms"]["maximum"] == MAX_TS_MS
            for field in definition["properties"].values():
                if field.get("type") == "integer":
                    integers += 1
                    assert field["description"].endswith(INTEGER_LITERAL_RULE), field
                if field.get("type") == "string":
                    assert "maxLength" in field, field
        assert integers > 10


def test_output_schemas_are_the_models_as_they_are() -> None:
    for name in set(SCHEMAS) - INPUT_SCHEMAS:
        assert INTEGER_LITERAL_RULE not in render(name)
