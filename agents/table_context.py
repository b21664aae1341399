"""Reading and writing faust tables from a batch of events.

faust picks a table key's partition (and its RocksDB shard) from the *current event* of the running task. Inside
``take_events()`` that is just whichever record came last, so to touch a key from a batch we make an event of that
key's own partition current for the duration of the call. This is the one place that uses faust's private
``faust.streams._current_event`` context variable.

Only the context variable is set, never ``Stream.current_event``: ``take_events()`` reads the latter to pair each
buffered value with its event, and changing it under a waiting buffer fills the batch with the wrong (already
processed) events.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import faust
from faust.streams import _current_event
from faust.types import EventT


@contextmanager
def event_context(source: EventT) -> Iterator[None]:
    token = _current_event.set(weakref.ref(source))
    try:
        yield
    finally:
        _current_event.reset(token)


class PartitionedTable:
    """Get and set raw table values in the partition of a given source event."""

    def __init__(self, table: faust.Table[bytes, bytes]) -> None:
        self._table = table

    def get(self, key: bytes, source: EventT) -> bytes | None:
        with event_context(source):
            value: bytes | None = self._table.get(key)
            return value

    def set(self, key: bytes, value: bytes, source: EventT) -> None:
        with event_context(source):
            self._table[key] = value

    def delete(self, key: bytes, source: EventT) -> None:
        with event_context(source):
            self._table.pop(key, None)
