"""Input event models, schema version 1: the single source of truth for what producers send.

Every event carries the common fields of :class:`EventBase`. ``type`` selects the model (a tagged union),
``ts_ms`` is the event time in epoch milliseconds, UTC. Money is integer VND.

A :class:`Batch` envelope is one Kafka record carrying many events of one livestream (``channel_id``); every
event inside it must name the same ``channel_id``. Envelopes are the fast path: one Kafka record, one decode.

JSON Schema for other languages is generated from these classes into ``schemas/json/`` (``livestream schemas``).
The rules a JSON Schema cannot express are :data:`RECORD_RULES` (written into the schemas' descriptions) and are
enforced by ``stream/decode.py``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1
MAX_RECORD_BYTES: Final = 4 * 1024 * 1024
"""Largest Kafka record value accepted; larger ones go to the dead-letter topic as ``oversized``."""
MAX_JSON_DEPTH: Final = 32
"""Deepest JSON nesting accepted, counting every array and object (unknown fields included) and the record's own
object as level 1; events need 1 level, envelopes 3. Deeper records go to the dead-letter topic as ``too_deep``."""
MAX_BATCH_EVENTS: Final = 10_000
"""Most events in one batch envelope. An envelope is bounded by :data:`MAX_RECORD_BYTES` too: the limits agree so
that a full envelope fits when its events average up to :data:`ENVELOPE_EVENT_BYTES` (every event of the fair
replay, an event with UUID ids and a short comment); larger events fit fewer to an envelope."""
ENVELOPE_EVENT_BYTES: Final = MAX_RECORD_BYTES // MAX_BATCH_EVENTS - 1
MAX_TS_MS: Final = 253_402_300_799_999
"""Latest representable event time: 9999-12-31T23:59:59.999Z (the decoder's time bounds are much narrower)."""

INTEGER_LITERAL_RULE: Final = (
    "Written as a JSON integer literal: no fraction and no exponent (100000.0 and 1.7e12 are rejected, although "
    'JSON Schema\'s "integer" admits them).'
)
RECORD_RULES: Final = (
    "Rules this schema cannot express, enforced by the decoder (a record that breaks one goes to the dead-letter "
    f"topic): the value is UTF-8 JSON text without a byte-order mark, at most {MAX_RECORD_BYTES} bytes, nested at "
    f"most {MAX_JSON_DEPTH} levels deep (unknown fields included); integer fields are JSON integer literals, with "
    "no fraction or exponent; the Kafka key is the UTF-8 of channel_id; every event of an envelope names the "
    "envelope's channel_id; ts_ms is within the accepted window around the processing time (LIVESTREAM_MAX_PAST_DAYS "
    "before, LIVESTREAM_MAX_FUTURE_S after). Unknown fields are ignored. In an envelope, an event that breaks a rule "
    "is rejected alone and the envelope's other events are kept."
)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS, description="event time, epoch milliseconds UTC")]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Vnd = Annotated[int, msgspec.Meta(ge=0, le=10_000_000_000, description="integer Vietnamese dong")]

OrderStatus = Literal["placed", "paid", "cancelled", "refunded"]


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Fields common to every event."""

    v: Literal[1] = 1
    """Schema version. Unknown versions are rejected to the dead-letter topic."""
    event_id: NonEmpty
    """Unique per event; a client retry resends the same id."""
    channel_id: NonEmpty
    """The livestream. Kafka key of ``livestream.events``; all of a livestream's events share a partition."""
    creator_id: NonEmpty
    """The creator (host) who emitted the event's livestream; co-hosted streams name the host on air."""
    campaign: NonEmpty
    """The campaign (fair) the livestream belongs to."""
    user_id: NonEmpty
    """The viewer or buyer."""
    ts_ms: EpochMs


class View(EventBase, frozen=True, kw_only=True, tag="view"):
    """A viewer enters a livestream: one view, one more concurrent viewer."""


class Leave(EventBase, frozen=True, kw_only=True, tag="leave"):
    """A viewer leaves a livestream: one fewer concurrent viewer."""


class Comment(EventBase, frozen=True, kw_only=True, tag="comment"):
    text: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Like(EventBase, frozen=True, kw_only=True, tag="like"):
    """A burst of likes (taps) by one viewer; ``count`` taps."""

    count: Count = 1


class Share(EventBase, frozen=True, kw_only=True, tag="share"):
    pass


class AddToCart(EventBase, frozen=True, kw_only=True, tag="add_to_cart"):
    product_id: NonEmpty
    quantity: Count = 1


class Order(EventBase, frozen=True, kw_only=True, tag="order"):
    """An order's state. Counted as a paid order (and GMV) when ``status == "paid"``."""

    order_id: NonEmpty
    product_id: NonEmpty
    quantity: Count
    amount_vnd: Vnd
    status: OrderStatus


class LiveEnd(EventBase, frozen=True, kw_only=True, tag="live_end"):
    """The livestream ended (the platform's end-of-live signal); ``user_id`` is the host who ended it.

    A livestream that ended is not *down*: silence after it raises no stream-down alert. A later event of the
    same livestream (a restart) makes it live again.
    """


Event = View | Leave | Comment | Like | Share | AddToCart | Order | LiveEnd
EVENT_TYPES: Final = (View, Leave, Comment, Like, Share, AddToCart, Order, LiveEnd)
EVENT_TYPE_NAMES: Final = tuple(t.__struct_config__.tag for t in EVENT_TYPES)


class Batch(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="batch"):
    """Batch envelope: many events of one livestream in one Kafka record, in event order."""

    v: Literal[1] = 1
    channel_id: NonEmpty
    events: Annotated[list[Event], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]


Record = Event | Batch
"""What one Kafka record value of ``livestream.events`` holds: a single event or a batch envelope."""
