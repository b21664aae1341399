"""Scripted incidents on top of a fair replay, for alert scenarios: an outage, a viewer drop, an order surge.

A :class:`ScriptedReplay` holds the replay's minute slices in memory; each incident edits them in place and keeps
each livestream's events in time order. Its :attr:`~ScriptedReplay.oracle` counts the edited events, so counters
stay exact whatever was injected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from schemas.events import Event, Leave, Order, View
from stream.replay.generator import FairReplay, MinuteSlice
from stream.replay.oracle import Oracle

MINUTE_MS = 60_000
_by_ts = attrgetter("ts_ms")


@dataclass
class ScriptedReplay:
    """A replay's minute slices, editable; iterate :meth:`minutes` like a :class:`FairReplay`."""

    slices: list[MinuteSlice]
    _oracle: Oracle | None = field(default=None, repr=False)

    @classmethod
    def of(cls, replay: FairReplay) -> ScriptedReplay:
        return cls(list(replay.minutes()))

    def minutes(self) -> Iterator[MinuteSlice]:
        return iter(self.slices)

    def events(self) -> Iterator[Event]:
        for minute in self.slices:
            for events in minute.by_channel.values():
                yield from events

    @property
    def oracle(self) -> Oracle:
        if self._oracle is None:
            self._oracle = Oracle.from_events(self.events())
        return self._oracle

    def _edited(self) -> None:
        self._oracle = None

    def _slice(self, ts_ms: int) -> MinuteSlice:
        for minute in self.slices:
            if minute.start_ms <= ts_ms < minute.start_ms + MINUTE_MS:
                return minute
        raise ValueError(f"{ts_ms} is outside the replay")

    def outage(self, channel_id: str, start_ms: int, end_ms: int) -> int:
        """The livestream sends nothing in ``[start_ms, end_ms)``. Returns the number of events removed."""
        removed = 0
        for minute in self.slices:
            events = minute.by_channel.get(channel_id)
            if events is None:
                continue
            kept = [e for e in events if not start_ms <= e.ts_ms < end_ms]
            removed += len(events) - len(kept)
            if kept:
                minute.by_channel[channel_id] = kept
            else:
                del minute.by_channel[channel_id]
        self._edited()
        return removed

    def present_viewers(self, channel_id: str, at_ms: int) -> list[str]:
        """Users watching ``channel_id`` just before ``at_ms`` (more views than leaves so far), sorted."""
        balance: dict[str, int] = {}
        for event in self.events():
            if event.channel_id != channel_id or event.ts_ms >= at_ms:
                continue
            if isinstance(event, View):
                balance[event.user_id] = balance.get(event.user_id, 0) + 1
            elif isinstance(event, Leave):
                balance[event.user_id] = balance.get(event.user_id, 0) - 1
        return sorted(user for user, n in balance.items() if n > 0)

    def viewer_drop(self, channel_id: str, at_ms: int, share: float) -> int:
        """``share`` of the viewers present leave at ``at_ms`` (their own later leave is dropped). Returns how many."""
        leaving = self.present_viewers(channel_id, at_ms)
        leaving = leaving[: int(len(leaving) * share)]
        pending = set(leaving)
        for minute in self.slices:
            events = minute.by_channel.get(channel_id)
            if events is None or minute.start_ms + MINUTE_MS <= at_ms:
                continue
            kept = []
            for event in events:
                if isinstance(event, Leave) and event.ts_ms >= at_ms and event.user_id in pending:
                    pending.discard(event.user_id)
                    continue
                kept.append(event)
            minute.by_channel[channel_id] = kept
        target = self._slice(at_ms)
        template = target.by_channel[channel_id][0]
        target.by_channel[channel_id].extend(
            Leave(
                event_id=f"incident-leave-{i}",
                channel_id=channel_id,
                creator_id=template.creator_id,
                campaign=template.campaign,
                user_id=user,
                ts_ms=at_ms,
            )
            for i, user in enumerate(leaving)
        )
        target.by_channel[channel_id].sort(key=_by_ts)
        self._edited()
        return len(leaving)

    def order_surge(self, channel_id: str, at_ms: int, orders: int, amount_vnd: int) -> None:
        """``orders`` extra orders placed and paid within a second of ``at_ms``."""
        target = self._slice(at_ms)
        events = target.by_channel[channel_id]
        template = events[0]
        for i in range(orders):
            for status, offset in (("placed", 0), ("paid", 500)):
                events.append(
                    Order(
                        event_id=f"incident-order-{i}-{status}",
                        channel_id=channel_id,
                        creator_id=template.creator_id,
                        campaign=template.campaign,
                        user_id=f"incident-buyer-{i}",
                        ts_ms=at_ms + offset,
                        order_id=f"incident-order-{i}",
                        product_id="vai-luc-ngan-3kg",
                        quantity=1,
                        amount_vnd=amount_vnd,
                        status=status,  # type: ignore[arg-type]
                    )
                )
        events.sort(key=_by_ts)
        self._edited()
