"""Which final windows were already emitted, read back from the compacted stats topics.

Final window records are produced to the stats partition equal to their livestream's events partition, so the
owner of events partition ``p`` is the only writer of stats partition ``p``. Before it processes ``p`` it reads
that partition of each stats topic and remembers, per (livestream, window size), the newest window start found.
A window closed again after a crash (its state change was lost, the record was not) is then recognised and not
emitted twice. Windows of a livestream close in start order, so the newest start is the whole record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from agents.topic_reader import stream_to_end
from schemas.alerts import AlertRecord
from schemas.stats import CampaignWindowStats, WindowStats

log = logging.getLogger(__name__)


def window_identity(value: bytes) -> tuple[str, int, int]:
    """(livestream, size, start) of a ``WindowStats`` record value."""
    window = msgspec.json.decode(value, type=WindowStats)
    return window.channel_id, window.window_end_ms - window.window_start_ms, window.window_start_ms


class CampaignEmitted:
    """Campaign window records already on the campaign stats topic, as (campaign, start, revision), read back.

    A campaign minute can be emitted again as a correction (a higher revision), and a minute can be emitted after
    later ones, so this keeps every record's identity (a fair has a few hundred)."""

    def __init__(self, kafka: Mapping[str, Any], topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.seen: set[tuple[str, int, int]] = set()
        self.loaded = False

    def already_emitted(self, campaign: str, start_ms: int, revision: int) -> bool:
        return (campaign, start_ms, revision) in self.seen

    def mark(self, campaign: str, start_ms: int, revision: int) -> None:
        self.seen.add((campaign, start_ms, revision))

    def forget(self) -> None:
        self.loaded = False
        self.seen.clear()

    async def load(self) -> None:
        if self.loaded:
            return
        async for records in stream_to_end(self.kafka, self.topic, {0}):
            for record in records:
                if record.value is not None:
                    window = msgspec.json.decode(record.value, type=CampaignWindowStats)
                    self.mark(window.campaign, window.window_start_ms, window.revision)
        self.loaded = True


class EmittedIndex:
    """Newest emitted window start per (subject, window size), read back from the given compacted topics."""

    def __init__(
        self,
        kafka: Mapping[str, Any],
        topics: list[str],
        identity: Callable[[bytes], tuple[str, int, int]] = window_identity,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.identity = identity
        self.newest: dict[tuple[str, int], int] = {}
        self.loaded: set[int] = set()

    def already_emitted(self, channel_id: str, size_ms: int, start_ms: int) -> bool:
        return start_ms <= self.newest.get((channel_id, size_ms), -1)

    def mark(self, channel_id: str, size_ms: int, start_ms: int) -> None:
        key = (channel_id, size_ms)
        if start_ms > self.newest.get(key, -1):
            self.newest[key] = start_ms

    def forget(self, partitions: set[int]) -> None:
        self.loaded -= partitions

    async def load(self, partitions: set[int]) -> None:
        """Read stats partitions ``partitions`` of every stats topic to their current end."""
        partitions = partitions - self.loaded
        if not partitions:
            return
        started = time.monotonic()

        async def read(topic: str) -> int:
            found = 0
            async for records in stream_to_end(self.kafka, topic, partitions):
                for record in records:
                    if record.value is not None:
                        self.mark(*self.identity(record.value))
                        found += 1
            return found

        count = sum(await asyncio.gather(*(read(topic) for topic in self.topics)))
        self.loaded |= partitions
        log.info(
            "read %d emitted windows of partitions %s in %.2f s", count, sorted(partitions), time.monotonic() - started
        )


class AlertIndex:
    """Alert transitions (``alert_id``, ``status``) already on the alerts topic, read back per partition.

    An alert change redone after a crash (its state change was lost, the record was not) is then not published
    twice. Alert records of a livestream go to its events partition, so each owner reads only its own.
    """

    def __init__(self, kafka: Mapping[str, Any], topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.seen: set[tuple[str, str]] = set()
        self.loaded: set[int] = set()

    def already_emitted(self, alert_id: str, status: str) -> bool:
        return (alert_id, status) in self.seen

    def mark(self, alert_id: str, status: str) -> None:
        self.seen.add((alert_id, status))

    def forget(self, partitions: set[int]) -> None:
        self.loaded -= partitions

    async def load(self, partitions: set[int]) -> None:
        partitions = partitions - self.loaded
        if not partitions:
            return
        async for records in stream_to_end(self.kafka, self.topic, partitions):
            for record in records:
                if record.value is not None:
                    alert = msgspec.json.decode(record.value, type=AlertRecord)
                    self.mark(alert.alert_id, alert.status)
        self.loaded |= partitions
