"""The alert scenario end to end: a scaled fair with an outage, a viewer drop and an order burst, through a real
worker on real Kafka and Redis, with the worker killed (-9) and restarted part-way. The alerts topic must hold
exactly one firing and one resolved record per incident and per GMV milestone, nothing else, and Redis no active
alert once everything resolved."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time

import msgspec

from livestream.producer import ReplayResult, produce_replay
from schemas.alerts import AlertRecord
from tests.alert_scenario import build_scenario, simulate
from tests.support import Pipeline, check_campaign_windows, parse_metrics, wait_until

CAMPAIGN = "ocop-bac-giang-2023"
PACE_SECONDS = 20.0


def test_alert_scenario_fires_and_resolves_each_alert_exactly_once(pipeline: Pipeline) -> None:
    pipeline.extra_env.update(LIVESTREAM_IDLE_TIMEOUT_S="10", LIVESTREAM_IDLE_TICK_S="1")
    scenario = build_scenario()
    expected_changes = simulate(scenario.replay)
    expected = sorted((c.alert_id, c.status) for c in expected_changes)
    assert len(expected) == 8, "three incidents and the 100M VND milestone, each firing and resolved"

    worker = pipeline.start_worker()
    settings = pipeline.settings()
    produced: list[ReplayResult] = []
    minutes = len(scenario.replay.slices)

    def produce() -> None:
        speed = minutes * 60 / PACE_SECONDS
        produced.append(
            asyncio.run(
                produce_replay(
                    scenario.replay, settings.kafka_client_options(), settings.events_topic, batch=200, speed=speed
                )
            )
        )

    thread = threading.Thread(target=produce, daemon=True)
    started = time.monotonic()
    thread.start()
    time.sleep(max(0.0, started + 0.25 * PACE_SECONDS - time.monotonic()))  # before the first incident (35 %)
    pipeline.stop_worker(worker, signal.SIGKILL)
    pipeline.start_worker()
    thread.join(120)
    assert produced, "the replay did not finish"
    oracle = scenario.replay.oracle
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary())

    alerts_topic = settings.alerts_topic
    wait_until(lambda: len(pipeline.read_topic(alerts_topic)) >= len(expected), 120, "every alert record")
    check_campaign_windows(pipeline, oracle, complete=True)
    records = pipeline.read_topic(alerts_topic)
    decoded = [msgspec.json.decode(r.value or b"", type=AlertRecord) for r in records]
    assert sorted((a.alert_id, a.status) for a in decoded) == expected
    for record, alert in zip(records, decoded, strict=True):
        assert record.key == alert.alert_id.encode()
    by_id: dict[str, list[AlertRecord]] = {}
    for alert in sorted(decoded, key=lambda a: a.emitted_at_ms):
        by_id.setdefault(alert.alert_id, []).append(alert)
    for alert_id, episode in by_id.items():
        assert [a.status for a in episode] == ["firing", "resolved"], alert_id
        assert episode[0].at_ms <= episode[1].at_ms
    for key in scenario.expected():
        rule, channel, window = key
        assert f"{rule}|{channel}|{window}" in by_id, key

    # Active alerts: none left in Redis, none in /metrics; the restarted worker published every transition.
    active = pipeline.redis().hgetall(f"{settings.redis_prefix}alerts:active")
    assert active == {}, {k: json.loads(v) for k, v in active.items()}
    samples = parse_metrics(pipeline.metrics_text())
    for rule in ("stream_down", "viewer_drop", "order_surge", "gmv_milestone"):
        assert samples[f'livestream_alerts_firing{{rule="{rule}"}}'] == 0
        assert samples[f'livestream_alerts_total{{rule="{rule}"}}'] == 1
    assert samples['livestream_alerts_total{rule="payment_trouble"}'] == 0
    assert samples['livestream_alerts_total{rule="comment_spam"}'] == 0

    # The operators' CLI lists the same transitions from the topic, and nothing active.
    def cli(*args: str) -> list[dict[str, object]]:
        command = [sys.executable, "-m", "livestream", "--namespace", pipeline.namespace, "alerts", "--json", *args]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        result: list[dict[str, object]] = json.loads(done.stdout)
        return result

    assert sorted((str(a["alert_id"]), str(a["status"])) for a in cli("--history")) == expected
    assert cli() == []
