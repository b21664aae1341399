"""Same events, same answer: one sequence of records delivered three ways to a real worker gives identical final
windows (1- and 5-minute), campaign windows, late records and alert records.

Deliveries: all at once to a running worker; in chunks of irregular sizes with pauses (shorter than the idle
timeout); and after the worker sat idle for longer than the idle timeout, as one burst. The records are a scaled
fair plus hostile ones: a livestream whose third event arrives after its watermark passed ``end + grace``, client
retries, and a livestream whose clock runs 50 minutes ahead of the others on its partition.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from schemas.events import Comment, View
from stream.replay.generator import FairReplay
from stream.replay.profile import OCOP_FAIR, scaled
from tests.support import Pipeline, wait_until

IDLE = {"LIVESTREAM_IDLE_TIMEOUT_S": "5", "LIVESTREAM_IDLE_TICK_S": "1"}
CAMPAIGN = "ocop-bac-giang-2023"


def hostile_events(base_ms: int) -> list[Any]:
    def ev(kind: type, channel: str, i: int, ts: int) -> Any:
        return kind(
            event_id=f"{channel}-{i}",
            channel_id=channel,
            creator_id="det-host",
            campaign=CAMPAIGN,
            user_id=f"det-u{i}",
            ts_ms=ts,
        )

    x = "det-late-x"
    events = [ev(View, x, 1, base_ms + 5_000), ev(View, x, 2, base_ms + 75_000), ev(View, x, 3, base_ms + 10_000)]
    events += [ev(Comment, x, 4, base_ms + 80_000), ev(Comment, x, 4, base_ms + 80_000)]  # a client retry
    f = "det-ahead-f"
    events += [ev(View, f, 1, base_ms + 20_000), ev(View, f, 2, base_ms + 50 * 60_000)]
    return events


def records() -> list[tuple[bytes, bytes]]:
    replay = FairReplay(scaled(OCOP_FAIR, 0.002), 5)
    fair = list(replay.iter_events())
    base = fair[len(fair) // 3].ts_ms
    hostile = hostile_events(base - base % 60_000)
    out = [(e.channel_id.encode(), msgspec.json.encode(e)) for e in fair]
    for i, event in enumerate(hostile):  # spread over the middle third, in their own order
        out.insert(len(out) // 3 + i * 37, (event.channel_id.encode(), msgspec.json.encode(event)))
    return out


def produce(pipeline: Pipeline, chunks: list[list[tuple[bytes, bytes]]], pauses: list[float]) -> None:
    settings = pipeline.settings()

    async def run() -> None:
        producer = AIOKafkaProducer(**settings.kafka_client_options(), enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            for chunk, pause in zip(chunks, pauses, strict=True):
                for key, value in chunk:
                    await producer.send(settings.events_topic, value, key=key)
                await producer.flush()
                await asyncio.sleep(pause)
        finally:
            await producer.stop()

    asyncio.run(run())


def outputs(pipeline: Pipeline) -> dict[str, Any]:
    """Every output of the namespace, without emission times, once it stopped changing."""
    settings = pipeline.settings()
    topics = {
        "stats_1m": settings.stats_1m_topic,
        "stats_5m": settings.stats_hop_topic,
        "campaign": settings.campaign_stats_topic,
        "alerts": settings.alerts_topic,
        "late": settings.late_topic,
    }

    def read() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, topic in topics.items():
            values = []
            for record in pipeline.read_topic(topic):
                value = msgspec.json.decode(record.value or b"null")
                if isinstance(value, dict):
                    value.pop("emitted_at_ms", None)
                values.append((record.key, msgspec.json.encode(value, order="sorted")))
            seen[name] = sorted(values)
        return seen

    last: dict[str, Any] = {}
    stable_since = time.monotonic()

    def settled() -> bool:
        nonlocal last, stable_since
        now = read()
        if now != last:
            last, stable_since = now, time.monotonic()
        return bool(now["stats_1m"]) and time.monotonic() - stable_since > 12

    wait_until(settled, 240, "outputs to stop changing", interval=1.0)
    pipeline.wait_committed_to_end(30, "committed offsets at the end")
    return last


def deliver(pipeline: Pipeline, mode: str, recs: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    pipeline.extra_env.update(IDLE)
    pipeline.start_worker()
    if mode == "together":
        produce(pipeline, [recs], [0])
    elif mode == "paused":
        rng = random.Random(3)
        chunks, pauses, i = [], [], 0
        while i < len(recs):
            size = rng.choice([1, 2, 7, 50, 400, 1500])
            chunks.append(recs[i : i + size])
            pauses.append(rng.choice([0, 0, 0, 0.3, 1.5]) if len(pauses) < 12 else 0)
            i += size
        produce(pipeline, chunks, pauses)
    else:  # idle longer than the idle timeout, then one burst
        time.sleep(5 * 1.5 + 2)
        produce(pipeline, [recs], [0])
    return outputs(pipeline)


@pytest.mark.slow
def test_the_same_records_give_the_same_outputs_however_they_arrive(services: None, tmp_path: Any) -> None:
    recs = records()
    results = {}
    for mode in ("together", "paused", "idle-then-burst"):
        pipe = Pipeline(root=tmp_path / mode)
        pipe.prepare()
        try:
            results[mode] = deliver(pipe, mode, recs)
        finally:
            pipe.stop_all()
            pipe.cleanup_redis()
    reference = results["together"]
    late = [msgspec.json.decode(v)["event_id"] for _, v in reference["late"]]
    assert "det-late-x-3" in late, "the third event arrives after its window closed: late in every delivery"
    assert reference["campaign"], "campaign windows were emitted"
    for mode in ("paused", "idle-then-burst"):
        for name, values in reference.items():
            assert results[mode][name] == values, f"{name} differs when delivered {mode}"
