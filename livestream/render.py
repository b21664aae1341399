"""Terminal rendering of live counters (rich tables).

Ids are any text (``[bold]``, ``[/x]``, newlines), so they go into tables as :class:`rich.text.Text`, never
through rich's markup parser; only numeric columns are formatted as numbers.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_INTEGER = re.compile(r"-?[0-9]+")

WIDE_OUTPUT_COLUMNS = 200
"""Width of tables written to a file or a pipe (rich would use 80 and cut every cell)."""


def console() -> Console:
    """A console for tables: the terminal's width on a terminal (or ``COLUMNS``), else :data:`WIDE_OUTPUT_COLUMNS`."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=WIDE_OUTPUT_COLUMNS)


TEXT_COLUMNS = frozenset({"channel_id", "creators", "active_alerts"})


def _n(value: Any) -> str:
    text = str(value)
    return f"{int(text):,}" if _INTEGER.fullmatch(text) else text


def _cell(key: str, value: Any) -> Text:
    return Text(str(value) if key in TEXT_COLUMNS else _n(value))


def channel_table(campaign: str, channels: dict[str, dict[str, Any]], totals: dict[str, int]) -> Table:
    title = Text(f"{campaign}: {totals['livestreams']} livestreams, {totals['creators']} creators")
    table = Table(title=title)
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
    ranked = sorted(channels.items(), key=lambda kv: (-int(kv[1].get("gmv_vnd", 0)), kv[0]))
    for channel_id, fields in ranked:
        name = f"{channel_id} (ended)" if fields.get("ended") else channel_id
        table.add_row(*[Text(name) if key == "channel_id" else _cell(key, fields.get(key, "")) for _, key in columns])
    table.add_section()
    fair = {
        **totals,
        "creators": str(totals["creators"]),
        "peak_concurrent_viewers": "",
        "concurrent_viewers": totals.get("concurrent_viewers", 0),
    }
    table.add_row(*[Text("FAIR") if key == "channel_id" else Text(_n(fair.get(key, ""))) for _, key in columns])
    return table
