"""Poison pills interleaved with a real replay: each lands in the dead-letter topic, every good event counts."""

from __future__ import annotations

import asyncio
import threading

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.dlq import DEAD_LETTER_BUDGET_BYTES
from stream.decode import DEAD_LETTER_REASONS
from tests.chaos.test_failures import assert_exact
from tests.support import Pipeline, parse_metrics, wait_until
from tests.unit.test_decode import POISON, REJECTS

DEFAULT_MESSAGE_MAX_BYTES = 1_048_588
"""Kafka's default ``message.max.bytes`` (the local broker raises it; the dead-letter topic here gets the default)."""


def create_dead_letter_topic_with_the_default_limit(pipeline: Pipeline) -> None:
    settings = pipeline.settings()

    async def run() -> None:
        admin = AIOKafkaAdminClient(**settings.kafka_client_options())
        await admin.start()
        try:
            limit = {"max.message.bytes": str(DEFAULT_MESSAGE_MAX_BYTES)}
            await admin.create_topics([NewTopic(settings.dlq_topic, 1, 1, topic_configs=limit)])
        finally:
            await admin.close()

    asyncio.run(run())


def test_poison_pills_interleaved_with_good_events(pipeline: Pipeline) -> None:
    """Every pill in the dead-letter topic with its source coordinates (a pill over 4 MiB too, cut to fit a topic
    with Kafka's default size limit), every good event counted, every offset committed."""
    pipeline.extra_env.update({"LIVESTREAM_IDLE_TIMEOUT_S": "5", "LIVESTREAM_IDLE_TICK_S": "1"})
    create_dead_letter_topic_with_the_default_limit(pipeline)
    pipeline.start_worker()
    # The events topic carries the keys the pills claim; re-key "c1" pills to a real livestream.
    pills = [(reason, b"ocop-live-03" if key == b"c1" else key, value) for reason, key, value in POISON]
    pills = [(r, k, v.replace(b'"c1"', b'"ocop-live-03"') if v else v) for r, k, v in pills]
    assert len({reason for reason, _, _ in pills}) >= 10 and len(pills) >= 12

    # An envelope whose every event is invalid: each event goes to the dead-letter topic on its own.
    rejects = [(reason, raw.replace(b'"c1"', b'"ocop-live-03"')) for reason, raw in REJECTS]
    envelope = b'{"type":"batch","channel_id":"ocop-live-03","events":[' + b",".join(r for _, r in rejects) + b"]}"

    def inject() -> None:
        for _ in range(2):
            pipeline.produce_raw([(key, value) for _, key, value in pills])
            pipeline.produce_raw([(b"ocop-live-03", envelope)])

    poisoner = threading.Thread(target=inject)
    poisoner.start()
    result = pipeline.replay(scale=0.003, seed=4, batch=1, speed=285 * 60 / 8)
    poisoner.join(60)
    assert_exact(pipeline, result.oracle, seed=4, scale=0.003)

    expected = sorted([reason for reason, _, _ in pills] * 2 + [reason for reason, _ in rejects] * 2)
    wait_until(lambda: len(pipeline.read_topic(pipeline.settings().dlq_topic)) >= len(expected), 60, "dead letters")
    dead = pipeline.read_topic(pipeline.settings().dlq_topic)
    assert sorted(r.headers["error"].decode() for r in dead) == expected
    assert any("truncated_from" in r.headers for r in dead), "the pill over the size limit was cut"
    events = {(r.partition, r.offset): r for r in pipeline.read_topic(pipeline.settings().events_topic)}
    for record in dead:
        source = events[(int(record.headers["source_partition"]), int(record.headers["source_offset"]))]
        assert record.headers["source_topic"] == pipeline.settings().events_topic.encode()
        assert record.headers["error_message"]
        if "source_event_index" in record.headers:  # one event of an envelope: its own JSON
            index = int(record.headers["source_event_index"])
            assert source.value == envelope
            assert (record.key, record.value) == (source.key, rejects[index][1])
            assert record.headers["error"].decode() == rejects[index][0]
        elif "truncated_from" in record.headers:  # an oversized record: its start and its size
            assert source.value is not None and record.value is not None
            assert int(record.headers["truncated_from"]) == len(source.value)
            assert source.value.startswith(record.value) and 900_000 < len(record.value) < DEAD_LETTER_BUDGET_BYTES
        else:
            assert (source.key, source.value) == (record.key, record.value), "the dead letter is the original record"
    samples = parse_metrics(pipeline.metrics_text())
    for reason in DEAD_LETTER_REASONS:
        assert samples[f'livestream_dlq_records_total{{reason="{reason}"}}'] == expected.count(reason)
    pipeline.wait_committed_to_end(60, "offsets to advance past every pill")
