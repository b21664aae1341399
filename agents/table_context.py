"""Reading and writing faust tables outside faust's per-record stream iteration.

faust picks a table key's partition (and its RocksDB shard, and its changelog partition) from the *current event*
of the running task. The bulk path (``agents/bulk_consumer.py``) has no faust events, so a table is touched with a
:class:`PartitionContext` of the key's partition made current for the duration of the call. This is the one place
that uses faust's private ``faust.streams._current_event`` context variable.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event

from stream.settings import Settings


@dataclass(frozen=True, slots=True)
class _SourceMessage:
    topic: str
    partition: int


class PartitionContext:
    """Stands in for a faust event of ``topic[partition]``: all a table needs of it is ``message.partition``."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _SourceMessage(topic, partition)


@contextmanager
def event_context(source: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(source))
    try:
        yield
    finally:
        _current_event.reset(token)


class PartitionedTable:
    """Get and set raw table values in the partition of a given source (a faust event or a PartitionContext)."""

    def __init__(self, table: faust.Table[bytes, bytes]) -> None:
        self._table = table

    def get(self, key: bytes, source: Any) -> bytes | None:
        with event_context(source):
            value: bytes | None = self._table.get(key)
            return value

    def set(self, key: bytes, value: bytes, source: Any) -> None:
        with event_context(source):
            self._table[key] = value

    def delete(self, key: bytes, source: Any) -> None:
        with event_context(source):
            self._table.pop(key, None)


def raw_bytes() -> faust.Schema:
    """A bytes-in, bytes-out schema. Each topic and table needs its own instance: a Schema shared between the
    events topic and a table made faust 0.15.3 acknowledge the topic's records without delivering them."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def raw_table(app: faust.App, name: str, partitions: int, help_text: str, settings: Settings) -> Any:
    """A RocksDB-backed table of raw bytes (key and value types must be set on the Table itself).

    RocksDB buffers are sized for a worker's share of a fair, not faust's server defaults (64 MB memtables, three
    of them, and a 2 GB block cache per table partition), which would let a worker grow to gigabytes.
    """
    return app.Table(
        name,
        default=None,
        partitions=partitions,
        help=help_text,
        key_type=bytes,
        value_type=bytes,
        schema=raw_bytes(),
        # Compaction only works on closed segments: small segments let the changelog be compacted during a fair,
        # so a takeover replays the latest value per key, not every write since the start.
        extra_topic_configs={
            "segment.bytes": str(settings.changelog_segment_mb * 1024 * 1024),
            "segment.ms": str(10 * 60 * 1000),
            "min.cleanable.dirty.ratio": "0.1",
        },
        options={
            "write_buffer_size": settings.rocksdb_write_buffer_mb * 1024 * 1024,
            "max_write_buffer_number": 2,
            "target_file_size_base": 16 * 1024 * 1024,
            "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024,
        },
    )
