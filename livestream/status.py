"""``livestream status``: the board's live table in the terminal (rich), read from Redis like the query API.

Ids are any text, so they go into the table as :class:`rich.text.Text`, never through rich's markup parser.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agents.fair import SORT_KEYS, FairReader, sort_channels
from stream.settings import Settings

SPARK_MINUTES = 30
BLOCKS = " ▁▂▃▄▅▆▇█"
ICT = timezone(timedelta(hours=7), "ICT")
SORTS = (*SORT_KEYS, "views", "items", "name")
_FIELDS = {**SORT_KEYS, "views": "views", "items": "items_sold", "name": "channel_id"}


def spark(values: list[int]) -> str:
    """Values as a line of block characters (one per minute), scaled to the largest."""
    peak = max(values, default=0)
    if peak <= 0:
        return BLOCKS[1] * len(values)
    return "".join(BLOCKS[max(1, round(8 * v / peak))] if v > 0 else BLOCKS[1] for v in values)


async def namespaces_with_campaigns(redis_url: str) -> list[str]:
    """Namespaces whose campaigns are in Redis (a ``<namespace>:campaigns`` set that is not empty), the most recent
    demo first (``demo<unix time>``), then by name."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        found = []
        async for key in client.scan_iter(match="*:campaigns", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if await client.scard(name):
                found.append(name.removesuffix(":campaigns"))
    finally:
        await client.aclose()

    def recency(namespace: str) -> tuple[int, int, str]:
        digits = namespace.removeprefix("demo")
        is_demo = namespace.startswith("demo") and digits.isdigit()
        return (1 if is_demo else 0, int(digits) if is_demo else 0, namespace)

    return sorted(found, key=recency, reverse=True)


def with_data(settings: Settings, campaign: str | None) -> Settings:
    """``settings``, or, when its namespace holds no campaign in Redis and another one does (each demo run has a
    namespace of its own), the settings of that namespace (the most recent demo first), said on stderr."""
    try:
        if asyncio.run(read_status(settings, campaign)) is not None:
            return settings
        others = [n for n in asyncio.run(namespaces_with_campaigns(settings.redis_url)) if n != settings.namespace]
    except (OSError, aioredis.RedisError):
        return settings  # the screen shows the outage
    if not others:
        return settings
    print(
        f"no campaign under namespace {settings.namespace!r}; showing {others[0]!r} "
        f"(others: {', '.join(others[1:]) or 'none'}; choose with --namespace)",
        file=sys.stderr,
    )
    return settings.model_copy(update={"namespace": others[0]})


async def read_status(settings: Settings, campaign: str | None = None) -> dict[str, Any] | None:
    """What the status screen shows: the campaign (default: the one with the most GMV), its livestreams with their
    last 30 minutes, its active alerts; ``None`` if Redis holds no campaign."""
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        reader = FairReader(client, settings)
        names = await reader.campaign_names()
        if not names:
            return None
        if campaign is None:
            fairs = [await reader.campaign(name, minutes=0) for name in names]
            campaign = max(fairs, key=lambda f: (f["totals"]["gmv_vnd"], f["campaign"]))["campaign"]
        fair = await reader.campaign(campaign, minutes=0)
        channels = await reader.channels(campaign)
        sparks = await reader.sparks(channels, SPARK_MINUTES)
        alerts = [a for a in await reader.active_alerts() if a["campaign"] == campaign]
        return {"fair": fair, "channels": channels, "sparks": sparks, "alerts": alerts}
    finally:
        await client.aclose()


def _n(value: int) -> str:
    return f"{value:,}"


def render_status(
    view: dict[str, Any] | None, sort: str = "gmv", ascending: bool = False, now: float | None = None
) -> Group:
    """The status screen: fair totals, active alerts, every livestream sorted by ``sort``."""
    if view is None:
        return Group(Text("no campaign in Redis yet"))
    fair, totals = view["fair"], view["fair"]["totals"]
    clock = (
        datetime.fromtimestamp(fair["clock_ms"] / 1000, UTC).astimezone(ICT).strftime("%H:%M:%S ICT")
        if fair["clock_ms"] > 0
        else "-"
    )
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).astimezone().strftime("%H:%M:%S")
    head = Table.grid(padding=(0, 3))
    figures = [
        ("GMV VND", _n(totals["gmv_vnd"])),
        ("GMV USD", f"{totals['gmv_usd']:,.2f}"),
        ("orders", _n(totals["orders_paid"])),
        ("items", _n(totals["items_sold"])),
        ("views", _n(totals["views"])),
        ("watching now", _n(fair["watching_now"])),
        ("unique viewers", _n(fair["unique_viewers"])),
        ("GPM VND", _n(totals["gpm_vnd"])),
        ("conversion", f"{100 * totals['conversion']:.2f}%"),
    ]
    for _ in figures:
        head.add_column(justify="right")
    head.add_row(*(Text(label, style="dim") for label, _ in figures))
    head.add_row(*(Text(value, style="bold") for _, value in figures))
    title = Text(
        f"{fair['campaign']}  fair time {clock}  {fair['livestreams']} livestreams: {fair['live']} live, "
        f"{fair['silent']} silent, {fair['ended']} ended  (updated {stamp})"
    )
    parts: list[Any] = [title, head]
    if view["alerts"]:
        alerts = Table(title=Text("active alerts"), title_justify="left", expand=False)
        for column in ("severity", "rule", "subject", "age", "summary"):
            alerts.add_column(column)
        for a in view["alerts"]:
            style = {"page": "bold red", "ticket": "yellow", "info": "cyan"}.get(a["severity"], "")
            alerts.add_row(
                Text(a["severity"], style=style),
                Text(a["rule"]),
                Text(a["channel_id"] or a["campaign"]),
                Text(f"{a['age_s'] // 60} min" if a["age_s"] >= 60 else f"{a['age_s']} s"),
                Text(a["summary"]),
            )
        parts.append(alerts)
    field = _FIELDS.get(sort, "gmv_vnd")
    table = Table(title=Text(f"livestreams by {sort} ({'ascending' if ascending else 'descending'})"))
    columns = ("livestream", "status", "watching", "views", "uniq", "orders", "items", "GMV VND", "GMV USD", "GPM")
    for column in columns:
        table.add_column(column, justify="left" if column in ("livestream", "status") else "right")
    table.add_column(f"GMV, last {SPARK_MINUTES} min")
    if field == "channel_id":
        ordered = sorted(view["channels"], key=lambda c: c["channel_id"], reverse=not ascending)
    else:
        ordered = sort_channels(view["channels"], field, not ascending)
    for c in ordered:
        status_style = {"live": "green", "silent": "yellow", "ended": "dim"}[c["status"]]
        status = Text(c["status"], style=status_style)
        if c["active_alerts"]:
            status.append(" " + ",".join(c["active_alerts"]), style="bold red")
        table.add_row(
            Text(c["channel_id"]),
            status,
            Text(_n(c["watching_now"])),
            Text(_n(c["views"])),
            Text(_n(c["unique_viewers"])),
            Text(_n(c["orders_paid"])),
            Text(_n(c["items_sold"])),
            Text(_n(c["gmv_vnd"])),
            Text(f"{c['gmv_usd']:,.2f}"),
            Text(_n(c["gpm_vnd"])),
            Text(spark([w["gmv_vnd"] for w in view["sparks"].get(c["channel_id"], [])]), style="green"),
        )
    parts.append(table)
    return Group(*parts)


def run_status(
    settings: Settings,
    *,
    campaign: str | None,
    sort: str,
    ascending: bool,
    once: bool,
    console: Console | None = None,
    interval: float = 1.0,
) -> int:
    """Render once, or every ``interval`` seconds until Ctrl-C; a Redis outage shows as a stale line."""
    console = console or Console()
    if once:
        console.print(render_status(asyncio.run(read_status(settings, campaign)), sort, ascending))
        return 0
    last: Group | None = None
    last_ok = "never"
    with Live(console=console, screen=False, auto_refresh=False) as live:
        try:
            while True:
                try:
                    last = render_status(asyncio.run(read_status(settings, campaign)), sort, ascending)
                    live.update(last, refresh=True)
                    last_ok = datetime.now(UTC).astimezone().strftime("%H:%M:%S")
                except (OSError, aioredis.RedisError) as exc:
                    stale = Text(f"stale since {last_ok}: Redis {exc!r}", style="bold red")
                    live.update(Group(stale, last) if last else stale, refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
