"""Which final windows were already emitted, read back from the compacted stats topics.

Final window records are produced to the stats partition equal to their livestream's events partition, so the
owner of events partition ``p`` is the only writer of stats partition ``p``. Before it processes ``p`` it reads
that partition of each stats topic and remembers, per (livestream, window size), the newest window start found.
A window closed again after a crash (its state change was lost, the record was not) is then recognised and not
emitted twice. Windows of a livestream close in start order, so the newest start is the whole record.
"""

from __future__ import annotations

import logging
import time

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.stats import WindowStats

log = logging.getLogger(__name__)


class EmittedIndex:
    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
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
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024
        )
        await consumer.start()
        count = 0
        try:
            tps = [TopicPartition(t, p) for t in self.topics for p in sorted(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:  # explicit seeks: a lazy seek_to_beginning can lose to the default offset reset
                consumer.seek(tp, starts[tp])
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000)
                for tp, records in batch.items():
                    for record in records:
                        if record.value is not None and record.offset < ends[tp]:
                            window = msgspec.json.decode(record.value, type=WindowStats)
                            size = window.window_end_ms - window.window_start_ms
                            self.mark(window.channel_id, size, window.window_start_ms)
                            count += 1
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        self.loaded |= partitions
        log.info(
            "read %d emitted windows of partitions %s in %.2f s", count, sorted(partitions), time.monotonic() - started
        )
