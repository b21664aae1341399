"""Any partitioner, same answer: the fair written by confluent-kafka-python's default producer (librdkafka's
``consistent_random`` partitioner: CRC32 of the key, so most livestreams land on another partition than their
murmur2 home), or by two producers with different partitioners for different livestreams, comes out exactly as the
oracle says, with one worker and with two, through a backlog catch-up and an idle close.

Records placed away from their home are forwarded there; each livestream is judged by the partition its producer
wrote it to (its *source*): idle ticks are copied to every other partition behind the records forwarded before
them, so a forwarding partition that is behind holds back only its own livestreams.
"""

from __future__ import annotations

import zlib

import pytest
from confluent_kafka import Producer

from livestream.producer import encode_minutes
from stream.replay.generator import FairReplay
from stream.replay.profile import OCOP_FAIR, scaled
from tests.chaos.test_failures import FAST_IDLE, SCALE, assert_exact
from tests.chaos.test_several_workers import assert_committed_to_the_end, assert_no_crash
from tests.support import Pipeline, parse_metrics

SEED = 43


def produce_with_confluent_kafka(pipeline: Pipeline, replay: FairReplay, mixed: bool) -> tuple[int, int]:
    """Every record of ``replay`` produced by confluent-kafka's default producer (``mixed``: livestreams whose
    CRC32 is even go through an aiokafka-like murmur2 placement instead, chosen by the pipeline's own function);
    returns (records, records placed away from their murmur2 home)."""
    from aiokafka.partitioner import murmur2

    settings = pipeline.settings()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    records = away = 0
    for _start, minute_records, _events in encode_minutes(replay, batch=1):
        for key, value in minute_records:
            home = (murmur2(key) & 0x7FFFFFFF) % pipeline.partitions
            if mixed and zlib.crc32(key) % 2 == 0:
                producer.produce(settings.events_topic, value, key=key, partition=home)
                placed = home
            else:
                producer.produce(settings.events_topic, value, key=key)
                placed = zlib.crc32(key) % pipeline.partitions  # librdkafka's consistent_random for a key
            away += placed != home
            records += 1
            producer.poll(0)
    assert producer.flush(60) == 0, "every record delivered"
    return records, away


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "mixed"), [(1, False), (2, False), (2, True)], ids=["1-worker", "2-workers", "2-workers-mixed"]
)
def test_the_fair_written_by_confluent_kafka_comes_out_exact(pipeline: Pipeline, workers: int, mixed: bool) -> None:
    pipeline.extra_env.update(FAST_IDLE)
    pipeline.prepare()
    replay = FairReplay(scaled(OCOP_FAIR, SCALE), SEED)
    records, away = produce_with_confluent_kafka(pipeline, replay, mixed)  # a backlog: the workers start after
    assert away > records // 4, "most records must land away from their murmur2 home for this test to mean much"
    for index in range(workers):
        pipeline.start_worker(index=index, wait=False)
    assert_exact(pipeline, replay.oracle, seed=SEED)
    assert_committed_to_the_end(pipeline)
    assert_no_crash(pipeline)
    if workers == 1:  # one group generation: the worker's counters cover the whole run
        figures = parse_metrics(pipeline.metrics_text())
        assert figures["livestream_records_processed_total"] == records, "each record counted once, at its home"
        assert figures["livestream_misrouted_records_total"] == away, "each record found away from home, once"
