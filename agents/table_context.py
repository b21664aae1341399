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
