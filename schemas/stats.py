"""Output models of the aggregated topics, schema version 1.

``<namespace>.stats.1m`` (compacted): one :class:`WindowStats` per (livestream, 1-minute window), key
``channel_id|window_start_ms``, emitted when the window closes (watermark >= end + grace), ``final`` true.
``<namespace>.stats.5m`` (compacted): the same for 5-minute windows hopping by 1 minute.

``<namespace>.campaign-stats.1m`` (compacted): one :class:`CampaignWindowStats` per (campaign, 1-minute window),
key ``campaign|window_start_ms``: the sum of its livestreams' final windows, emitted once every livestream's
window for that minute is final (see :mod:`stream.campaign`).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class WindowStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one livestream over the event-time window ``[window_start_ms, window_end_ms)``."""

    v: Literal[1] = 1
    channel_id: str
    campaign: str
    window_start_ms: int
    window_end_ms: int
    views: int
    leaves: int
    comments: int
    likes: int
    like_events: int
    shares: int
    add_to_carts: int
    orders_placed: int
    orders_paid: int
    orders_cancelled: int
    orders_refunded: int
    items_sold: int
    gmv_vnd: int
    emitted_at_ms: int
    final: bool = True


class CampaignWindowStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one campaign (all its livestreams) over ``[window_start_ms, window_end_ms)``."""

    v: Literal[1] = 1
    campaign: str
    window_start_ms: int
    window_end_ms: int
    livestreams: int
    """Livestreams with at least one event in the window."""
    views: int
    leaves: int
    comments: int
    likes: int
    like_events: int
    shares: int
    add_to_carts: int
    orders_placed: int
    orders_paid: int
    orders_cancelled: int
    orders_refunded: int
    items_sold: int
    gmv_vnd: int
    gmv_to_date_vnd: int
    """The campaign's GMV over every campaign window record emitted so far, corrections included, up to and
    including this one (a running sum in emission order)."""
    emitted_at_ms: int
    final: bool = True
    revision: int = 0
    """0 for the first record of the minute; n for its n-th correction: a livestream window that arrived after
    the minute was emitted was added (same key, so the compacted topic keeps the corrected record)."""
