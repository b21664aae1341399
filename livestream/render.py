"""Terminal rendering of live counters (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _n(value: Any) -> str:
    return f"{int(value):,}" if str(value).lstrip("-").isdigit() else str(value)


def channel_table(campaign: str, channels: dict[str, dict[str, Any]], totals: dict[str, int]) -> Table:
    table = Table(title=f"{campaign}: {totals['livestreams']} livestreams, {totals['creators']} creators")
    columns = [
        ("livestream", "channel_id"),
        ("creators", "creators"),
        ("views", "views"),
        ("uniq", "unique_viewers"),
        ("now", "concurrent_viewers"),
        ("peak", "peak_concurrent_viewers"),
        ("comments", "comments"),
        ("likes", "likes"),
        ("carts", "add_to_carts"),
        ("orders", "orders_paid"),
        ("items", "items_sold"),
        ("GMV VND", "gmv_vnd"),
        ("alerts", "active_alerts"),
    ]
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("livestream", "creators", "alerts") else "right")
    ranked = sorted(channels.items(), key=lambda kv: -int(kv[1].get("gmv_vnd", 0)))
    for channel_id, fields in ranked:
        name = f"{channel_id} (ended)" if fields.get("ended") else channel_id
        table.add_row(*[name if key == "channel_id" else _n(fields.get(key, "")) for _, key in columns])
    table.add_section()
    fair = {
        **totals,
        "channel_id": "FAIR",
        "creators": str(totals["creators"]),
        "peak_concurrent_viewers": "",
        "concurrent_viewers": totals.get("concurrent_viewers", 0),
    }
    table.add_row(*[_n(fair.get(key, "")) if key != "channel_id" else "FAIR" for _, key in columns])
    return table
