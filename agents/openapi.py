"""The OpenAPI 3.1 document of the query API ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from stream.state import COUNTER_FIELDS

_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_COUNTERS = {name: _INT for name in COUNTER_FIELDS}
_MONEY = {"gmv_usd": _NUM, "gpm_vnd": _INT, "gpm_usd": _NUM, "conversion": _NUM}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": {"type": "string", "enum": ["bad_parameter", "not_found", "unavailable"]},
            "parameter": _STR,
            "message": _STR,
        },
        ["error", "message"],
    ),
    "Totals": _obj({**_COUNTERS, **_MONEY}),
    "Minute": _obj(
        {
            "window_start_ms": _INT,
            "window_end_ms": _INT,
            "livestreams": _INT,
            **_COUNTERS,
            "gmv_to_date_vnd": _INT,
            "gmv_usd": _NUM,
            "gmv_to_date_usd": _NUM,
        }
    ),
    "Campaign": _obj(
        {
            "campaign": _STR,
            "totals": _ref("Totals"),
            "unique_viewers": _INT,
            "creators": _INT,
            "livestreams": _INT,
            "live": _INT,
            "silent": _INT,
            "ended": _INT,
            "watching_now": _INT,
            "clock_ms": _INT,
            "gmv_to_date_vnd": _INT,
            "gmv_to_date_usd": _NUM,
            "final_minutes": _INT,
            "minutes": _array(_ref("Minute")),
            "active_alerts": _INT,
        }
    ),
    "CampaignList": _obj({"items": _array(_ref("Campaign"))}),
    "SparkPoint": _obj(
        {"window_start_ms": _INT, "window_end_ms": _INT, "final": _BOOL, "gmv_vnd": _INT, "views": _INT}
    ),
    "Window": _obj({"window_start_ms": _INT, "window_end_ms": _INT, "final": _BOOL, **_COUNTERS, "gmv_usd": _NUM}),
    "Channel": _obj(
        {
            "channel_id": _STR,
            "campaign": _STR,
            "creators": _array(_STR),
            "status": {"type": "string", "enum": ["live", "silent", "ended"]},
            "ended": _BOOL,
            "silent": _BOOL,
            **_COUNTERS,
            "unique_viewers": _INT,
            "concurrent_viewers": _INT,
            "watching_now": _INT,
            "peak_concurrent_viewers": _INT,
            "first_ts_ms": _INT,
            "last_ts_ms": _INT,
            "late_events": _INT,
            "active_alerts": _array(_STR),
            "updated_at_ms": _INT,
            **_MONEY,
            "spark": _array(_ref("SparkPoint")),
        },
        [
            "channel_id",
            "campaign",
            "status",
            *COUNTER_FIELDS,
            "unique_viewers",
            "concurrent_viewers",
            "watching_now",
            "gmv_usd",
        ],
    ),
    "ChannelPage": _obj(
        {
            "items": _array(_ref("Channel")),
            "next_cursor": {"type": ["string", "null"]},
            "total": _INT,
            "sort": _STR,
            "order": _STR,
            "limit": _INT,
        }
    ),
    "Alert": _obj(
        {
            "alert_id": _STR,
            "rule": _STR,
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            "severity": _STR,
            "channel_id": _STR,
            "campaign": _STR,
            "window_start_ms": _INT,
            "at_ms": _INT,
            "value": _NUM,
            "threshold": _NUM,
            "summary": _STR,
            "age_s": _INT,
            "resolved_at_ms": {"type": ["integer", "null"]},
        },
        ["alert_id", "rule", "status", "severity", "channel_id", "campaign", "window_start_ms", "at_ms", "summary"],
    ),
    "AlertList": _obj({"items": _array(_ref("Alert"))}),
}
SCHEMAS["ChannelDetail"] = {
    "allOf": [
        _ref("Channel"),
        _obj(
            {
                "windows": _array(_ref("Window")),
                "alerts": _array(_ref("Alert")),
                "alert_history": _array(_ref("Alert")),
            }
        ),
    ]
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ERRORS = {
    "400": _json("Error", "a bad parameter (named in `parameter`)"),
    "503": _json("Error", "Redis unreachable"),
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _get(summary: str, schema: str, parameters: list[dict[str, Any]], not_found: bool = False) -> dict[str, Any]:
    responses = {"200": _json(schema, summary), **_ERRORS}
    if not_found:
        responses["404"] = _json("Error", "no such campaign or livestream")
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


_PATH_ID = {
    "type": "string",
    "minLength": 1,
    "description": "any id the events carry; percent-encode reserved characters (`/` as `%2F`)",
}


def openapi_document() -> dict[str, Any]:
    campaign_id = {"name": "campaign_id", "in": "path", "required": True, "schema": _PATH_ID}
    channel_id = {"name": "channel_id", "in": "path", "required": True, "schema": _PATH_ID}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "livestream query API",
            "version": "1.0.0",
            "description": "Live counters of a livestream-commerce fair, served from Redis by every worker. Money is "
            "integer VND plus a USD figure at the configured rate (LIVESTREAM_VND_PER_USD).",
        },
        "paths": {
            "/api/v1/campaigns": _get("every campaign with its totals", "CampaignList", []),
            "/api/v1/campaigns/{campaign_id}": _get(
                "a campaign: totals, unique viewers, GMV per final minute and to date",
                "Campaign",
                [
                    campaign_id,
                    _query(
                        "minutes",
                        {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                        "only the last N final minutes",
                    ),
                ],
                not_found=True,
            ),
            "/api/v1/channels": _get(
                "livestreams, sorted and paginated",
                "ChannelPage",
                [
                    _query("campaign", _STR, "only this campaign (404 if unknown)"),
                    _query("sort", {"type": "string", "enum": ["gmv", "orders", "viewers", "concurrent"]}, "key"),
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}, "default desc"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size, default 50"),
                    _query("cursor", _STR, "next_cursor of the previous page"),
                    _query("windows", {"type": "integer", "minimum": 0, "maximum": 60}, "sparkline minutes"),
                ],
                not_found=True,
            ),
            "/api/v1/channels/{channel_id}": _get(
                "a livestream: live counters, derived figures, its last N one-minute windows, its alerts",
                "ChannelDetail",
                [channel_id, _query("windows", {"type": "integer", "minimum": 1, "maximum": 1440}, "default 30")],
                not_found=True,
            ),
            "/api/v1/alerts": _get("active alerts", "AlertList", []),
            "/api/v1/alerts/history": _get(
                "every alert seen, firing or resolved",
                "AlertList",
                [_query("campaign", _STR, "only this campaign"), _query("channel", _STR, "only this livestream")],
            ),
        },
        "components": {"schemas": SCHEMAS},
    }
