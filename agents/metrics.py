"""``/metrics``: a Prometheus collector that renders the live snapshot at scrape time.

Nothing is recorded per event; every value is read from :class:`LiveSnapshot` when Prometheus scrapes.

- Fair-wide series, unlabelled, two of each: ``livestream_<x>_total`` counts what this worker process applied
  itself (views, orders, GMV...): monotonic for the life of the process, whatever partitions it gains or loses, so
  ``sum(rate(...))`` across workers is the fair's rate; ``livestream_owned_<x>`` is the gauge of the stream-to-date
  totals of the livestreams the worker owns now (``sum()`` across workers is the fair's total once every partition
  is owned). Money is in VND (``_vnd``).
- Per-livestream series are gauges of stream-to-date values for the top K livestreams by GMV plus one
  ``channel="other"`` series summing the rest, so label cardinality stays at K + 1 however many streams run.
  They are gauges, not counters, because a stream can move between its own series and ``other``.
- ``livestream_unique_viewers`` is the campaign HyperLogLog estimate, identical on every worker (use ``max()``).
- Partition health (agents/health.py), rendered at scrape time with the scrape's wall clock:
  ``livestream_partition_owned{topic,partition}`` 1/0 for *every* partition of the events topic (so that a partition
  no scraped worker owns is visible as ``max by (topic, partition) (...) == 0``), ``livestream_topic_partitions``,
  ``livestream_owned_partitions``, and per owned partition ``livestream_partition_last_progress_timestamp_seconds``
  and ``livestream_partition_stalled``; ``livestream_worker_ready`` (the ``/readyz`` result) and
  ``livestream_fold_failed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents.health import DEFAULT_STALL_AFTER_S, readiness, stall_after, stalled_partitions
from stream.decode import DEAD_LETTER_REASONS
from stream.settings import Settings
from stream.snapshot import LiveSnapshot
from stream.state import Counters, average_order_value

FAIR_COUNTERS: dict[str, tuple[str, str]] = {
    "views": ("livestream_views", "Viewer entries into livestreams"),
    "leaves": ("livestream_leaves", "Viewer exits from livestreams"),
    "comments": ("livestream_comments", "Comments"),
    "likes": ("livestream_likes", "Likes (taps)"),
    "shares": ("livestream_shares", "Shares"),
    "add_to_carts": ("livestream_add_to_carts", "Add-to-cart actions"),
    "orders_placed": ("livestream_orders_placed", "Orders placed"),
    "orders_paid": ("livestream_orders_paid", "Paid orders"),
    "orders_cancelled": ("livestream_orders_cancelled", "Cancelled orders"),
    "orders_refunded": ("livestream_orders_refunded", "Refunded orders"),
    "items_sold": ("livestream_items_sold", "Items in paid orders"),
    "gmv_vnd": ("livestream_gmv_vnd", "Gross merchandise value of paid orders, VND"),
}
FAIR_FIELDS = (
    "views",
    "leaves",
    "comments",
    "likes",
    "shares",
    "add_to_carts",
    "orders_placed",
    "orders_paid",
    "orders_cancelled",
    "orders_refunded",
    "items_sold",
    "gmv_vnd",
)
"""The fair figures served twice: counted by this process (counter) and owned now (gauge ``livestream_owned_*``)."""
CHANNEL_GAUGES = ("views", "orders_paid", "gmv_vnd", "comments", "likes", "add_to_carts")


class SnapshotCollector(Collector):
    def __init__(
        self,
        live: LiveSnapshot,
        top_k: int,
        events_topic: str,
        partitions: int = 0,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.live = live
        self.top_k = top_k
        self.events_topic = events_topic
        self.partitions = partitions
        self.stall_after_s = stall_after_s
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        yield from self._fair()
        yield from self._channels()
        yield from self._pipeline()
        yield from self._health()

    def _fair(self) -> Iterator[Metric]:
        live = self.live
        totals = live.totals()
        for name in FAIR_FIELDS:
            metric, doc = FAIR_COUNTERS[name]
            yield CounterMetricFamily(metric, f"{doc} counted by this worker", value=getattr(live.counted, name))
        yield from (
            GaugeMetricFamily(
                f"livestream_owned_{name}",
                f"{FAIR_COUNTERS[name][1]}, stream-to-date, of the livestreams this worker owns",
                value=getattr(totals, name),
            )
            for name in FAIR_FIELDS
        )
        yield GaugeMetricFamily(
            "livestream_concurrent_viewers", "Viewers currently watching", value=live.concurrent_viewers()
        )
        yield GaugeMetricFamily(
            "livestream_livestreams", "Livestreams with at least one event", value=len(live.channels)
        )
        creators = {c for s in live.channels.values() for c in s.creators}
        yield GaugeMetricFamily("livestream_creators", "Distinct creators seen in events", value=len(creators))
        unique = GaugeMetricFamily(
            "livestream_unique_viewers", "Distinct viewers of the campaign (HyperLogLog)", labels=["campaign"]
        )
        for campaign, count in sorted(live.campaign_unique_viewers.items()):
            unique.add_metric([campaign], count)
        yield unique
        yield GaugeMetricFamily(
            "livestream_average_order_value_vnd", "GMV per paid order, VND", value=average_order_value(totals)
        )

    def _channels(self) -> Iterator[Metric]:
        top, rest = self.live.top_channels(self.top_k)
        families = {
            name: GaugeMetricFamily(
                f"livestream_channel_{name}",
                f"Stream-to-date {name.replace('_', ' ')} of the top livestreams by GMV (others summed as 'other')",
                labels=["channel"],
            )
            for name in CHANNEL_GAUGES
        }
        concurrent = GaugeMetricFamily(
            "livestream_channel_concurrent_viewers", "Viewers currently watching, top livestreams", labels=["channel"]
        )
        for state in top:
            for name, family in families.items():
                family.add_metric([state.channel_id], getattr(state.totals, name))
            concurrent.add_metric([state.channel_id], max(0, state.concurrent))
        if rest:
            other = Counters()
            for state in rest:
                other.merge(state.totals)
            for name, family in families.items():
                family.add_metric(["other"], getattr(other, name))
            concurrent.add_metric(["other"], sum(max(0, s.concurrent) for s in rest))
        yield from families.values()
        yield concurrent

    def _pipeline(self) -> Iterator[Metric]:
        live = self.live
        yield CounterMetricFamily(
            "livestream_records_processed", "Kafka records taken by the fold agent", value=live.records_processed
        )
        yield CounterMetricFamily("livestream_events_processed", "Events applied to state", value=live.events_processed)
        yield CounterMetricFamily(
            "livestream_redelivered_records", "Records skipped as already applied", value=live.redelivered_records
        )
        yield CounterMetricFamily(
            "livestream_late_events", "Events for closed windows (sent to the late topic)", value=live.late_events
        )
        yield CounterMetricFamily(
            "livestream_duplicate_events", "Events whose event_id was already applied", value=live.duplicate_events
        )
        yield CounterMetricFamily(
            "livestream_duplicate_order_updates",
            "Order events whose (order id, status) was already counted (e.g. a re-sent payment)",
            value=live.duplicate_order_updates,
        )
        yield CounterMetricFamily(
            "livestream_misrouted_records",
            "Records found on a partition other than their key's, forwarded to the right one",
            value=live.misrouted_records,
        )
        yield CounterMetricFamily("livestream_windows_closed", "Final windows closed", value=live.windows_closed)
        yield CounterMetricFamily(
            "livestream_windows_suppressed",
            "Final windows closed again after a restart and not re-emitted",
            value=live.duplicate_windows_suppressed,
        )
        yield CounterMetricFamily(
            "livestream_campaign_windows_ignored",
            "Livestream windows the campaign aggregator ignored: repeats after a crash, or too old to correct",
            value=live.campaign_windows_ignored,
        )
        yield CounterMetricFamily(
            "livestream_campaign_corrections",
            "Campaign minutes emitted again (higher revision) with a livestream window that arrived late",
            value=live.campaign_corrections,
        )
        dlq = CounterMetricFamily("livestream_dlq_records", "Records sent to the dead-letter topic", labels=["reason"])
        for reason in DEAD_LETTER_REASONS:
            dlq.add_metric([reason], live.dead_letters.get(reason, 0))
        yield dlq
        yield CounterMetricFamily(
            "livestream_offset_gaps",
            "Offset gaps (records faust skipped) filled by re-reading them",
            value=live.offset_gaps,
        )
        yield CounterMetricFamily(
            "livestream_redis_errors", "Failed Redis mirror flushes and refused Redis commands", value=live.redis_errors
        )
        yield CounterMetricFamily("livestream_redis_flushes", "Redis mirror flushes", value=live.redis_flushes)
        yield CounterMetricFamily(
            "livestream_redis_rebuilds",
            "Times Redis had lost this worker's keys (a restart without data, FLUSHALL, eviction)",
            value=live.redis_rebuilds,
        )
        yield GaugeMetricFamily(
            "livestream_redis_evicting",
            "1 if Redis may evict keys (maxmemory-policy other than noeviction): served values can be lost and are "
            "rewritten when evictions are seen",
            value=int(live.redis_evicting),
        )
        firing = GaugeMetricFamily(
            "livestream_alerts_firing", "Active alerts of the livestreams and campaigns owned here", labels=["rule"]
        )
        fired = CounterMetricFamily(
            "livestream_alerts", "Alert firing records published by this worker", labels=["rule"]
        )
        for rule, count in live.alerts_firing().items():
            firing.add_metric([rule], count)
            fired.add_metric([rule], live.alerts_fired.get(rule, 0))
        yield firing
        yield fired
        lag = GaugeMetricFamily(
            "livestream_consumer_lag_records",
            "Records of an owned events partition not processed yet",
            labels=["topic", "partition"],
        )
        for partition, records in sorted(live.lag.items()):
            lag.add_metric([self.events_topic, str(partition)], records)
        yield lag

    def _health(self) -> Iterator[Metric]:
        live, topic = self.live, self.events_topic
        now = self.clock()
        owned = set(live.owned_partitions)
        partitions = GaugeMetricFamily(
            "livestream_topic_partitions", "Partitions of the events topic (the same on every worker)", labels=["topic"]
        )
        partitions.add_metric([topic], self.partitions)
        yield partitions
        yield GaugeMetricFamily(
            "livestream_owned_partitions", "Events partitions assigned to this worker", value=len(owned)
        )
        owned_family = GaugeMetricFamily(
            "livestream_partition_owned",
            "1 if this worker owns the events partition, else 0; served for every partition of the topic",
            labels=["topic", "partition"],
        )
        for partition in sorted(set(range(self.partitions)) | owned):
            owned_family.add_metric([topic, str(partition)], 1 if partition in owned else 0)
        yield owned_family
        progress = GaugeMetricFamily(
            "livestream_partition_last_progress_timestamp_seconds",
            "Wall-clock time an owned events partition last processed a record or was seen caught up",
            labels=["topic", "partition"],
        )
        stalled_family = GaugeMetricFamily(
            "livestream_partition_stalled",
            "1 if an owned events partition has records waiting and made no progress within the stall timeout",
            labels=["topic", "partition"],
        )
        stalled = stalled_partitions(live, now, self.stall_after_s)
        for partition in sorted(owned):
            since = live.progress_at_s.get(partition)
            if since is not None:
                progress.add_metric([topic, str(partition)], since)
            stalled_family.add_metric([topic, str(partition)], 1 if partition in stalled else 0)
        yield progress
        yield stalled_family
        ready, _ = readiness(live, now, self.stall_after_s)
        yield GaugeMetricFamily(
            "livestream_worker_ready",
            "1 if the worker is ready (partitions recovered, processing alive, no stalled partition), as /readyz",
            value=1 if ready else 0,
        )
        yield GaugeMetricFamily(
            "livestream_fold_failed",
            "1 once the processing loop has died (the worker is not ready and exits)",
            value=0 if live.fold_failure is None else 1,
        )


def build_registry(live: LiveSnapshot, settings: Settings, clock: Callable[[], float] = time.time) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SnapshotCollector(
            live,
            settings.top_k_channels,
            settings.events_topic,
            partitions=settings.partitions,
            stall_after_s=stall_after(settings),
            clock=clock,
        )
    )
    return registry


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> CollectorRegistry:
    registry = build_registry(live, settings)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return registry
