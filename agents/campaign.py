"""The campaign aggregator: ``<namespace>.campaign-input`` -> ``<namespace>.campaign-stats.1m`` and campaign alerts.

The input topic has one partition, so one worker runs it. Per batch: fold every input record into the one
:class:`~stream.campaign.CampaignState` (records at or below its ``last_offset`` are skipped), publish the campaign
windows that became final and the GMV-milestone alert transitions, *wait until Kafka has them*, then save the
state. Windows or alerts found already published (a crash between publishing and saving) are not sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
import msgspec

from agents.bulk_consumer import Chunk, ChunkProcessor, install, start_supervised
from agents.emitted import AlertIndex, CampaignEmitted
from agents.freeze import GUARD
from agents.table_context import PartitionContext, PartitionedTable, raw_bytes, raw_table
from agents.topic_reader import read_range
from schemas.stats import CampaignWindowStats
from stream import campaign
from stream.alerts import active_alert_record, alert_record, load_rules
from stream.settings import Settings
from stream.snapshot import LiveSnapshot

log = logging.getLogger(__name__)
STATE_KEY = b"campaigns"
_json = msgspec.json.Encoder()


class CampaignAggregator(ChunkProcessor):
    def __init__(self, app: faust.App, settings: Settings, live: LiveSnapshot) -> None:
        super().__init__(
            app,
            settings.campaign_input_topic,
            max_buffered=settings.max_buffered_records,
            batch_max_records=settings.batch_max_records,
            commit_interval_s=settings.commit_interval_s,
            max_buffered_bytes=settings.max_buffered_bytes,
            batch_max_bytes=settings.batch_max_bytes,
        )
        self.settings = settings
        self.live = live
        self.rules = load_rules(settings.alert_rules)
        self.size_ms = settings.window_size_s * 1000
        self.input_topic = app.topic(settings.campaign_input_topic, partitions=1, schema=raw_bytes(), acks=False)
        self.stats_topic = app.topic(settings.campaign_stats_topic, partitions=1, schema=raw_bytes())
        self.alerts_topic = app.topic(settings.alerts_topic, partitions=settings.partitions, schema=raw_bytes())
        self.table = raw_table(app, "campaign-state", 1, "campaign aggregator state", settings)
        self.states = PartitionedTable(self.table)
        self.context = PartitionContext(settings.campaign_input_topic, 0)
        self.emitted = CampaignEmitted(settings.kafka_client_options(), settings.campaign_stats_topic)
        self.alert_index = AlertIndex(settings.kafka_client_options(), settings.alerts_topic)

    def forget(self, partitions: set[int]) -> None:
        super().forget(partitions)
        if 0 in partitions:
            self.emitted.forget()
            self.alert_index.forget({0})
            self.live.campaign_alerts = {}
            self.live.campaign_alerts_dirty = True
            self.live.campaign_windows_ignored = 0

    async def process_chunks(self, chunks: list[Chunk]) -> None:
        await self.emitted.load()
        await self.alert_index.load({0})
        stored = self.states.get(STATE_KEY, self.context)
        state = campaign.decode_state(stored) if stored is not None else campaign.CampaignState()
        dropped_before = state.dropped_windows
        windows: list[campaign.CampaignWindow] = []
        alerts = []
        topic = self.settings.campaign_input_topic
        for message in (record for chunk in chunks for record in chunk.records):
            self.processed[0] = max(self.processed.get(0, -1), message.offset)
            if message.offset <= state.last_offset:
                continue  # fetched again after a seek back to the committed offset
            records = [message]
            if message.offset > state.last_offset + 1:
                # Records this state never saw (delivered to an owner whose state change was lost, or a fresh state
                # starting past the beginning): read them from Kafka; a fresh state reads from the beginning.
                kafka = self.settings.kafka_client_options()
                missed = await read_range(kafka, topic, 0, state.last_offset + 1, message.offset)
                if missed:
                    log.warning(
                        "campaign input: state at offset %d, next record %d: re-read %d records",
                        state.last_offset,
                        message.offset,
                        len(missed),
                    )
                records = [*missed, message]
            for item in records:
                try:
                    record = campaign.decode_input(item.value or b"")
                except msgspec.DecodeError as exc:  # internal topic: only our workers write it
                    log.error("undecodable campaign input at offset %d: %s", item.offset, exc)
                    state.last_offset = max(state.last_offset, item.offset)
                    continue
                out = campaign.apply_input(
                    state, record, item.offset, self.settings.partitions, self.size_ms, self.rules
                )
                if out:
                    windows.extend(out.windows)
                    alerts.extend(out.alerts)
        now_ms = int(time.time() * 1000)
        pending = []
        GUARD.check()  # from here on: side effects (see agents/freeze.py)
        for window in windows:
            if self.emitted.already_emitted(window.campaign, window.start_ms, window.revision):
                self.live.duplicate_windows_suppressed += 1
                continue
            record_value = msgspec.convert(
                {
                    **window.counters.as_dict(),
                    "campaign": window.campaign,
                    "window_start_ms": window.start_ms,
                    "window_end_ms": window.start_ms + window.size_ms,
                    "livestreams": window.livestreams,
                    "gmv_to_date_vnd": window.gmv_to_date_vnd,
                    "revision": window.revision,
                    "emitted_at_ms": now_ms,
                },
                CampaignWindowStats,
            )
            pending.append(
                await self.stats_topic.send(
                    key=f"{window.campaign}|{window.start_ms}".encode(),
                    value=_json.encode(record_value),
                    partition=0,
                    force=True,
                )
            )
            self.emitted.mark(window.campaign, window.start_ms, window.revision)
        for change in alerts:
            if self.alert_index.already_emitted(change.alert_id, change.status):
                continue
            log.info("alert %s %s: %s", change.status, change.alert_id, change.summary)
            pending.append(
                await self.alerts_topic.send(
                    key=change.alert_id.encode(),
                    value=_json.encode(alert_record(change, emitted_at_ms=now_ms)),
                    partition=0,
                    force=True,
                )
            )
            self.alert_index.mark(change.alert_id, change.status)
        if pending:
            await asyncio.gather(*pending)
        GUARD.check()
        self.states.set(STATE_KEY, campaign.encode(state), self.context)
        self.publish(state, now_ms)
        for change in alerts:
            if change.status == "firing":
                self.live.alerts_fired[change.rule] += 1
        if alerts:
            self.live.add_transitions([alert_record(change, now_ms) for change in alerts])
        if state.dropped_windows > dropped_before:
            log.warning(
                "campaign input: %d livestream window(s) for minutes older than every kept emitted minute of their "
                "campaign (the last %d) dropped, %d in all: their livestreams' events lagged far behind the others",
                state.dropped_windows - dropped_before,
                campaign.CORRECTION_HORIZON,
                state.dropped_windows,
            )
        self.live.campaign_windows_ignored = state.ignored_windows
        self.live.campaign_corrections = state.corrections
        self.live.pending_campaign.extend((w.campaign, w.start_ms, w.counters, w.livestreams) for w in windows)
        if windows or alerts:
            self.live.changed.set()

    def publish(self, state: campaign.CampaignState, now_ms: int) -> None:
        """Active campaign alerts into the live snapshot (Redis and /metrics read them from there)."""
        self.live.campaign_alerts = {
            name: {
                rule: active_alert_record(rule, alert, channel_id="", campaign=name, emitted_at_ms=now_ms)
                for rule, alert in active.items()
            }
            for name, active in state.alerts.items()
        }
        self.live.campaign_alerts_dirty = True


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> CampaignAggregator:
    aggregator = CampaignAggregator(app, settings, live)
    install(app, aggregator, aggregator.input_topic)
    start_supervised(app, aggregator, live, "campaign-windows")
    return aggregator
