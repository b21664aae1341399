"""The ingestion gateway on real Kafka: every bad input with its status and nothing produced for it, the fair sent
through it counted exactly by a worker, backpressure, metrics and logs."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from livestream.gateway_client import replay_via_gateway
from schemas.events import Batch
from stream.fold import TICK_HEADER
from stream.ingest import hash_token
from stream.replay.profile import OCOP_FAIR, scaled
from tests.gateway_support import CAMPAIGN, OTHER_TOKEN, TOKEN, GatewayProcess
from tests.support import Pipeline, parse_metrics, wait_until

pytestmark = pytest.mark.services

LIMITS = {
    "LIVESTREAM_GATEWAY_MAX_BODY_BYTES": "200000",
    "LIVESTREAM_GATEWAY_MAX_DECOMPRESSED_BYTES": "1000000",
    "LIVESTREAM_GATEWAY_MAX_EVENTS": "100",
    "LIVESTREAM_GATEWAY_MAX_EVENT_BYTES": "4096",
}


@pytest.fixture
def gateway(pipeline: Pipeline) -> Iterator[GatewayProcess]:
    process = GatewayProcess(pipeline.root, pipeline.namespace, env=dict(LIMITS)).start()
    try:
        yield process
    finally:
        process.stop()


def post(
    url: str, body: bytes | Iterator[bytes], token: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url + "/v1/events", data=body, method="POST")  # type: ignore[arg-type]
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def event(i: int, channel: str = "live-1", campaign: str = CAMPAIGN, **more: Any) -> dict[str, Any]:
    return {
        "type": "view",
        "event_id": f"ev-{i}",
        "channel_id": channel,
        "creator_id": "creator",
        "campaign": campaign,
        "user_id": f"user-{i}",
        "ts_ms": 1_687_600_000_000 + i,
        **more,
    }


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def topic_events(pipeline: Pipeline) -> list[tuple[bytes | None, str]]:
    """(record key, event id) of every event on the events topic; every record must be a batch envelope."""
    out = []
    for record in pipeline.read_topic(pipeline.settings().events_topic):
        if TICK_HEADER in record.headers:  # the worker's idle ticks share the topic
            continue
        assert record.value is not None
        batch = msgspec.json.decode(record.value, type=Batch)
        assert record.key == batch.channel_id.encode()
        out += [(record.key, e.event_id) for e in batch.events]
    return out


def test_every_bad_input_has_its_status_and_nothing_is_produced(pipeline: Pipeline, gateway: GatewayProcess) -> None:
    url = gateway.url
    marker = "PAYLOAD-MARKER-do-not-log"
    good = event(0, text=marker)
    cases: list[tuple[str, int, tuple[bytes | Iterator[bytes], str | None, dict[str, str]]]] = [
        ("no token", 401, (ndjson(good), None, {})),
        ("wrong token", 401, (ndjson(good), "not-a-token", {})),
        ("the hash as token", 401, (ndjson(good), hash_token(TOKEN), {})),
        ("basic auth", 401, (ndjson(good), None, {"Authorization": f"Basic {TOKEN}"})),
        ("wrong campaign", 403, (ndjson(event(1, campaign="other-fair")), TOKEN, {})),
        ("other source, fair campaign", 403, (ndjson(event(2)), OTHER_TOKEN, {})),
        ("body over the limit", 413, (b"x" * 200_001, TOKEN, {})),
        ("chunked body over the limit", 413, (iter([b"x" * 50_000] * 5), TOKEN, {})),
        ("gzip bomb", 413, (gzip.compress(b" " * 50_000_000), TOKEN, {"Content-Encoding": "gzip"})),
        ("too many events", 413, (ndjson(*[event(i) for i in range(101)]), TOKEN, {})),
        ("event over its byte limit", 400, (ndjson(event(3, text="y" * 5000)), TOKEN, {})),
        ("event too deep", 400, (ndjson(event(4, deep=json.loads("[" * 30 + "]" * 30))), TOKEN, {})),
        ("unsupported encoding", 415, (ndjson(good), TOKEN, {"Content-Encoding": "br"})),
        ("invalid gzip", 400, (b"not gzip at all", TOKEN, {"Content-Encoding": "gzip"})),
        ("not JSON", 400, (b"hello\nworld\n", TOKEN, {})),
        ("broken array", 400, (b'[{"type": "view"', TOKEN, {})),
        ("empty body", 400, (b"", TOKEN, {})),
        ("schema invalid", 400, (ndjson(event(5, ts_ms="soon")), TOKEN, {})),
        ("integral float", 400, (ndjson(event(6, ts_ms=1.6876e12)), TOKEN, {})),
        ("unknown type", 400, (ndjson(event(7, type="teleport")), TOKEN, {})),
        ("a batch envelope", 400, (json.dumps(Batch_doc()).encode(), TOKEN, {})),
        ("far future", 400, (ndjson(event(8, ts_ms=4_000_000_000_000)), TOKEN, {})),
    ]
    for name, status, (body, token, headers) in cases:
        got, _, answer = post(url, body, token, headers)
        assert got == status, (name, got, answer)
        if status == 400 and "errors" in answer:
            assert answer["accepted"] == 0 and answer["rejected"] >= 1, (name, answer)
    # Rate limit: the other source may send 10 events at once, then 5/s.
    allowed = [event(100 + i, channel=f"other-{i}", campaign="x") for i in range(12)]
    status, _, answer = post(url, ndjson(*allowed), OTHER_TOKEN)
    assert (status, answer["accepted"]) == (200, 12)
    status, headers, _ = post(url, ndjson(event(200, channel="other-1", campaign="x")), OTHER_TOKEN)
    assert status == 429 and int(headers["Retry-After"]) >= 1

    # One mixed request: valid, forbidden and invalid events; only the valid ones are produced, in order.
    mixed = [good, event(9, campaign="other-fair"), {"type": "view"}, event(10), event(11, channel="live-2")]
    body = b"[" + b",".join(json.dumps(e).encode() for e in mixed) + b"]"
    status, _, answer = post(url, gzip.compress(body), TOKEN, {"Content-Encoding": "gzip"})
    assert status == 200
    assert answer["accepted"] == 3 and answer["rejected"] == 2
    assert [(e["index"], e["error"]) for e in answer["errors"]] == [(1, "forbidden"), (2, "schema_invalid")]

    on_topic = topic_events(pipeline)
    expected = [(b"other-" + str(i).encode(), f"ev-{100 + i}") for i in range(12)]
    expected += [(b"live-1", "ev-0"), (b"live-1", "ev-10"), (b"live-2", "ev-11")]
    assert sorted(on_topic) == sorted(expected)
    assert [e for e in on_topic if e[0] == b"live-1"] == [(b"live-1", "ev-0"), (b"live-1", "ev-10")]

    metrics = gateway.metrics()
    samples = parse_metrics(metrics)
    by_status: dict[int, int] = {}
    for _, status, _ in cases:
        by_status[status] = by_status.get(status, 0) + 1
    by_status[200] = 2
    by_status[429] = 1
    for status, count in by_status.items():
        assert samples[f'livestream_gateway_requests_total{{code="{status}"}}'] == count, status
    assert samples['livestream_gateway_events_accepted_total{source="fair"}'] == 3
    assert samples['livestream_gateway_events_accepted_total{source="other"}'] == 12
    assert samples['livestream_gateway_events_rejected_total{reason="forbidden"}'] == 3
    assert samples['livestream_gateway_events_rejected_total{reason="oversized"}'] == 1
    assert samples['livestream_gateway_events_rejected_total{reason="too_deep"}'] == 1
    assert samples["livestream_gateway_request_duration_seconds_count"] == sum(by_status.values())
    assert samples["livestream_gateway_in_flight_bytes"] == 0
    assert samples["livestream_gateway_kafka_ready"] == 1
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed: deploy/local/test-deps.sh installs Debian's prometheus package"
    lint = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # No token, token hash or payload in any log line (the gateway logs at debug level here).
    log = gateway.log()
    assert "401" in log and "403" in log
    for secret in (TOKEN, OTHER_TOKEN, hash_token(TOKEN), hash_token(OTHER_TOKEN), marker, "teleport", "ev-1"):
        assert secret not in log, secret


def Batch_doc() -> dict[str, Any]:  # noqa: N802
    return {"type": "batch", "v": 1, "channel_id": "live-1", "events": [event(12)]}


def test_health_and_readiness(gateway: GatewayProcess) -> None:
    assert gateway.status("/healthz") == 200
    assert gateway.status("/readyz") == 200
    assert gateway.status("/v1/nothing") == 404


def test_in_flight_bound_answers_503_and_produces_nothing(pipeline: Pipeline) -> None:
    process = GatewayProcess(
        pipeline.root, pipeline.namespace, env={"LIVESTREAM_GATEWAY_MAX_IN_FLIGHT_BYTES": "2000"}
    ).start()
    try:
        status, headers, _ = post(process.url, ndjson(*[event(i) for i in range(20)]))
        assert status == 503 and int(headers["Retry-After"]) >= 1
        status, _, answer = post(process.url, ndjson(*[event(i) for i in range(5)]))
        assert (status, answer["accepted"]) == (200, 5)
    finally:
        process.stop()
    assert sorted(e for _, e in topic_events(pipeline)) == sorted(f"ev-{i}" for i in range(5))


def test_the_fair_through_the_gateway_is_exact_and_enveloped(pipeline: Pipeline, gateway: GatewayProcess) -> None:
    """A bounded load test on loopback: a scaled fair over 8 connections, then the worker's totals equal the
    oracle and every event is on the topic once, in envelopes."""
    pipeline.start_worker()
    result = asyncio.run(replay_via_gateway(gateway.url, TOKEN, scaled(OCOP_FAIR, 0.02), 5, batch=100, connections=8))
    assert result.events > 10_000 and result.retries == 0
    pipeline.wait_redis_summary(CAMPAIGN, result.oracle.summary(), timeout=120)
    on_topic = topic_events(pipeline)
    assert len(on_topic) == result.events == len(set(on_topic))
    records = sum(1 for r in pipeline.read_topic(pipeline.settings().events_topic) if TICK_HEADER not in r.headers)
    assert records < result.events / 5, f"{records} records for {result.events} events: not packed"
    channels = pipeline.redis_channels(CAMPAIGN)
    for channel_id, expected in result.oracle.channels.items():
        assert int(channels[channel_id]["views"]) == expected.views, channel_id
        assert int(channels[channel_id]["gmv_vnd"]) == expected.gmv_vnd, channel_id


def test_gzip_bomb_is_refused_while_reading(gateway: GatewayProcess) -> None:
    """A 256 MB bomb (about 250 kB compressed, under the body limit of 2 MB here) is cut off at the decompressed
    limit: the gateway's memory does not grow by the bomb's size."""
    process = GatewayProcess(
        gateway.root, gateway.namespace, env={"LIVESTREAM_GATEWAY_MAX_BODY_BYTES": "2000000"}
    ).start()
    try:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        bomb = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(256)) + compressor.flush()
        assert len(bomb) < 2_000_000
        status, _, answer = post(process.url, bomb, TOKEN, {"Content-Encoding": "gzip"})
        assert status == 413 and answer["error"] == "decompressed_too_large"
        assert process.proc is not None
        rss_kb = int(Path(f"/proc/{process.proc.pid}/status").read_text().split("VmHWM:")[1].split()[0])
        assert rss_kb < 400_000, f"peak RSS {rss_kb} kB"
    finally:
        process.stop()


def test_sighup_reloads_the_sources(pipeline: Pipeline, gateway: GatewayProcess) -> None:
    """Token rotation without a restart: the tokens file is rewritten and SIGHUP reloads it; a file that cannot be
    used keeps the sources in use."""
    assert gateway.proc is not None
    tokens = gateway.root / "tokens.toml"
    rotated = "rotated-source-token-0123456789abcdef"
    tokens.write_text(f'[sources.fair]\ntoken_sha256 = "{hash_token(rotated)}"\ncampaigns = ["{CAMPAIGN}"]\n')
    gateway.proc.send_signal(signal.SIGHUP)

    def rotated_accepted() -> bool:
        return post(gateway.url, ndjson(event(1)), token=rotated)[0] == 200

    wait_until(rotated_accepted, 10, "the rotated token to be accepted")
    assert post(gateway.url, ndjson(event(2)), token=TOKEN)[0] == 401, "the old token is gone"

    tokens.write_text("this is not TOML [")
    gateway.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "sources not reloaded" in gateway.log(), 10, "the bad file to be reported")
    assert post(gateway.url, ndjson(event(3)), token=rotated)[0] == 200, "a bad file keeps the sources in use"
    assert gateway.status("/healthz") == 200
    assert sorted(e for _, e in topic_events(pipeline)) == ["ev-1", "ev-3"]


def test_bodies_being_read_are_bounded_and_answer_503(pipeline: Pipeline) -> None:
    """Memory for bodies being read is bounded for all requests together: over the budget the request is answered
    503 with Retry-After while it is read, and nothing of it is produced; the budget is released afterwards."""
    small = ndjson(event(1))
    process = GatewayProcess(
        pipeline.root, pipeline.namespace, env={"LIVESTREAM_GATEWAY_MAX_READING_BYTES": str(2 * len(small) + 10)}
    ).start()
    try:
        status, headers, answer = post(process.url, ndjson(*[event(i) for i in range(10, 20)]))
        assert (status, answer["error"]) == (503, "busy") and int(headers["Retry-After"]) >= 1
        for _ in range(3):  # released after each request: the budget does not leak
            status, _, answer = post(process.url, small)
            assert (status, answer["accepted"]) == (200, 1)
    finally:
        process.stop()
    assert sorted({e for _, e in topic_events(pipeline)}) == ["ev-1"]
