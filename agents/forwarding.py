"""Records forwarded to their key's partition are reported as a summary, at most once per interval, never one log
line per record: a producer with another partitioner than murmur2 (librdkafka's default ``consistent_random``:
kcat, confluent-kafka) misplaces most records, and a line each would flood the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 60.0


class _Placed(Protocol):
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...


class ForwardLog:
    """Counts forwarded records; logs the first at once, then one summary per ``interval_s`` of what arrived since
    (:meth:`report_due` runs on a timer)."""

    def __init__(
        self, topic: str, interval_s: float = REPORT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.topic = topic
        self.interval_s = interval_s
        self.clock = clock
        self.total = 0
        self.unreported = 0
        self.routes: Counter[tuple[int, int]] = Counter()
        self.example = ""
        self.reported_at = float("-inf")

    def note(self, forwarded: Mapping[int, Sequence[_Placed]]) -> None:
        """The records of ``forwarded`` were copied to the partition they are listed under."""
        count = sum(len(records) for records in forwarded.values())
        if not count:
            return
        self.total += count
        self.unreported += count
        for target, records in forwarded.items():
            for source, n in Counter(record.partition for record in records).items():
                self.routes[(source, target)] += n
        if not self.example:
            target, records = next((target, records) for target, records in forwarded.items() if records)
            record = records[0]
            key = (record.key or b"")[:64]
            self.example = f"{self.topic}[{record.partition}]@{record.offset} key {key!r} -> partition {target}"
        now = self.clock()
        if now - self.reported_at >= self.interval_s:
            self.report(now)

    def report_due(self) -> None:
        """Report what is unreported once the interval has passed (called by a timer: a burst that ended within an
        interval is reported too, not only when a later forward arrives)."""
        now = self.clock()
        if self.unreported and now - self.reported_at >= self.interval_s:
            self.report(now)

    def report(self, now: float) -> None:
        routes = ", ".join(f"{source}->{target}: {n}" for (source, target), n in self.routes.most_common(6))
        log.warning(
            "forwarded %d records found on a partition other than their key's murmur2 partition (%d since start; "
            "e.g. %s; by partition %s): a producer placing keys with another partitioner costs a second write of "
            "each such record; next report in %.0f s at the earliest",
            self.unreported,
            self.total,
            self.example,
            routes,
            self.interval_s,
        )
        self.unreported = 0
        self.routes.clear()
        self.example = ""
        self.reported_at = now
