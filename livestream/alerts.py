"""``livestream alerts``: active operator alerts from Redis, or every transition from the alerts topic."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis

from agents.topic_reader import read_to_end
from livestream import readback
from schemas.alerts import AlertRecord
from stream.settings import Settings


def alert_history(settings: Settings) -> list[dict[str, Any]]:
    """Every record of the alerts topic, in event-time order of the transitions."""
    records = asyncio.run(read_to_end(settings.kafka_client_options(), settings.alerts_topic))
    alerts = [msgspec.to_builtins(msgspec.json.decode(r.value, type=AlertRecord)) for r in records if r.value]
    return sorted(alerts, key=lambda a: (a["at_ms"], a["alert_id"], a["status"] == "resolved"))


def show_alerts(settings: Settings, *, history: bool, as_json: bool) -> int:
    """Print alerts; returns the number printed."""
    if history:
        alerts = alert_history(settings)
    else:
        alerts = readback.read_active_alerts(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    if as_json:
        print(json.dumps(alerts))
        return len(alerts)
    from rich.table import Table
    from rich.text import Text

    from livestream.render import console

    title = "alert transitions (alerts topic)" if history else "active alerts (Redis)"
    table = Table(title=Text(f"{settings.namespace}: {title}"))
    for column in ("at (event time, UTC)", "rule", "subject", "status", "severity", "summary"):
        table.add_column(column)
    for alert in alerts:
        at = datetime.fromtimestamp(alert["at_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        subject = alert["channel_id"] or f"campaign {alert['campaign']}"
        # Subjects and summaries hold ids (any text): plain Text, never rich markup.
        cells = (at, alert["rule"], subject, alert["status"], alert["severity"], alert["summary"])
        table.add_row(*(Text(str(cell)) for cell in cells))
    console().print(table)
    return len(alerts)
