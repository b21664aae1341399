"""Output models of the aggregated topics, schema version 1.

``<namespace>.stats.1m`` (compacted): one :class:`WindowStats` per (livestream, 1-minute window), key
``channel_id|window_start_ms``, emitted when the window closes (watermark >= end + grace), ``final`` true.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from stream.snapshot import ClosedWindow


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

    @classmethod
    def from_closed(cls, window: ClosedWindow, emitted_at_ms: int) -> WindowStats:
        fields: dict[str, object] = {
            **window.counters.as_dict(),
            "channel_id": window.channel_id,
            "campaign": window.campaign,
            "window_start_ms": window.start_ms,
            "window_end_ms": window.start_ms + window.size_ms,
            "emitted_at_ms": emitted_at_ms,
        }
        return msgspec.convert(fields, cls)
