"""Writing faust tables from a batch of events.

faust picks a table key's partition (and the RocksDB shard) from the *current event*, which inside
``take_events()`` is just the last record taken. To write a key from a batch we make an event of that key's own
partition current first. This is the one place that touches faust's private ``Stream._set_current_event``.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import EventT


class PartitionedTable:
    """Get and set raw table values in the partition of a given source event."""

    def __init__(self, table: faust.Table[bytes, bytes], stream: Any) -> None:
        self._table = table
        self._stream = stream

    def get(self, key: bytes, source: EventT) -> bytes | None:
        self._stream._set_current_event(source)
        value: bytes | None = self._table.get(key)
        return value

    def set(self, key: bytes, value: bytes, source: EventT) -> None:
        self._stream._set_current_event(source)
        self._table[key] = value
