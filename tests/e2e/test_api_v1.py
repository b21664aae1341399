"""The query API /api/v1 and `livestream status` on one scaled replay through a real worker, Kafka and Redis: every
figure equals the oracle, pagination covers every livestream once, bad parameters answer 400 and unknown ids 404,
the OpenAPI document is valid and every answer matches it (schemathesis)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from rich.console import Console

from livestream.status import read_status, render_status
from stream.replay.oracle import COUNTER_FIELDS, Oracle
from tests.support import Pipeline, expected_campaign_windows, wait_until

CAMPAIGN = "ocop-bac-giang-2023"
RATE = 23_392.0
MINUTE = 60_000


@pytest.fixture(scope="module")
def fair(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, Oracle]]:
    """One worker, the fair at scale 0.02 replayed, every campaign minute final."""
    pipe = Pipeline(root=Path(tmp_path_factory.mktemp("api")))
    pipe.extra_env.update(LIVESTREAM_IDLE_TIMEOUT_S="5", LIVESTREAM_IDLE_TICK_S="1")
    pipe.prepare()
    try:
        pipe.start_worker()
        oracle = pipe.replay(scale=0.02, seed=3, batch=50).oracle
        pipe.wait_redis_summary(CAMPAIGN, oracle.summary())
        prefix = pipe.settings().redis_prefix
        minutes = len({start for _, start in oracle.windows})
        wait_until(lambda: pipe.redis().zcard(f"{prefix}campaign:{CAMPAIGN}:windows") == minutes, 120, "final minutes")
        yield pipe, oracle
    finally:
        pipe.stop_all()
        pipe.cleanup_redis()


def get(pipe: Pipeline, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{pipe.ports[-1]}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ok(pipe: Pipeline, path: str) -> Any:
    status, body = get(pipe, path)
    assert status == 200, (path, status, body)
    return body


def test_campaign_figures_equal_the_oracle(fair: tuple[Pipeline, Oracle]) -> None:
    pipe, oracle = fair
    assert oracle.events_by_type["live_end"] == oracle.livestreams == 26, "every livestream of the replay ends"
    listed = ok(pipe, "/api/v1/campaigns")["items"]
    assert [c["campaign"] for c in listed] == [CAMPAIGN]
    got = ok(pipe, f"/api/v1/campaigns/{CAMPAIGN}")
    expected = {name: sum(getattr(c, name) for c in oracle.channels.values()) for name in COUNTER_FIELDS}
    assert {name: got["totals"][name] for name in COUNTER_FIELDS} == expected
    assert got["totals"]["gmv_vnd"] == oracle.gmv_vnd and got["totals"]["orders_paid"] == oracle.orders
    assert got["totals"]["gmv_usd"] == round(oracle.gmv_vnd / RATE, 2)
    assert got["totals"]["gpm_vnd"] == oracle.gmv_vnd * 1000 // oracle.views
    assert got["totals"]["conversion"] == round(oracle.orders / got["unique_viewers"], 6)
    assert (got["livestreams"], got["ended"], got["live"], got["silent"]) == (26, 26, 0, 0)
    assert got["creators"] == oracle.creators
    assert got["watching_now"] == 0, "nobody watches a livestream that ended"
    assert abs(got["unique_viewers"] - oracle.unique_viewers) <= 0.03 * oracle.unique_viewers  # HyperLogLog
    assert got["clock_ms"] == max(c.last_ts_ms for c in oracle.channels.values())
    minutes = expected_campaign_windows(oracle)
    assert [m["window_start_ms"] for m in got["minutes"]] == sorted(minutes)
    to_date = 0
    for minute in got["minutes"]:
        want = minutes[minute["window_start_ms"]]
        assert {k: minute[k] for k in want} == want
        to_date += want["gmv_vnd"]
        assert minute["gmv_to_date_vnd"] == to_date
    assert got["gmv_to_date_vnd"] == oracle.gmv_vnd
    last = ok(pipe, f"/api/v1/campaigns/{CAMPAIGN}?minutes=30")["minutes"]
    assert last == got["minutes"][-30:]


@pytest.mark.parametrize("sort", ["gmv", "orders", "viewers", "concurrent"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pagination_covers_every_livestream_once_in_order(fair: tuple[Pipeline, Oracle], sort: str, order: str) -> None:
    pipe, oracle = fair
    field = {"gmv": "gmv_vnd", "orders": "orders_paid", "viewers": "unique_viewers", "concurrent": "watching_now"}[sort]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"campaign": CAMPAIGN, "sort": sort, "order": order, "limit": "7"}
        if cursor:
            query["cursor"] = cursor
        page = ok(pipe, "/api/v1/channels?" + urllib.parse.urlencode(query))
        assert page["total"] == 26 and len(page["items"]) <= 7
        seen.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 4
    ids = [c["channel_id"] for c in seen]
    assert sorted(ids) == sorted(oracle.channels), "every livestream exactly once"
    sign = -1 if order == "desc" else 1
    assert ids == [c["channel_id"] for c in sorted(seen, key=lambda c: (sign * c[field], c["channel_id"]))]
    for item in seen:
        want = oracle.channels[item["channel_id"]]
        assert {n: item[n] for n in COUNTER_FIELDS} == {n: getattr(want, n) for n in COUNTER_FIELDS}
        assert item["concurrent_viewers"] == max(0, want.concurrent)
        assert item["peak_concurrent_viewers"] == want.peak_concurrent
        assert (item["status"], item["watching_now"]) == ("ended", 0)
        assert item["creators"] == sorted(want.creators) or set(item["creators"]) == set(want.creators)
        assert item["gmv_usd"] == round(want.gmv_vnd / RATE, 2)
        assert abs(item["unique_viewers"] - want.unique_viewers) <= max(3, 0.03 * want.unique_viewers)


def test_livestream_detail_has_its_last_windows(fair: tuple[Pipeline, Oracle]) -> None:
    pipe, oracle = fair
    top = sorted(oracle.channels, key=lambda c: (-oracle.channels[c].gmv_vnd, c))[:3]
    for channel_id in top:
        want = oracle.channels[channel_id]
        got = ok(pipe, f"/api/v1/channels/{urllib.parse.quote(channel_id)}?windows=45")
        assert got["gmv_vnd"] == want.gmv_vnd and got["status"] == "ended"
        newest = want.last_ts_ms - want.last_ts_ms % MINUTE
        first = want.first_ts_ms - want.first_ts_ms % MINUTE
        starts = list(range(max(first, newest - 44 * MINUTE), newest + 1, MINUTE))
        assert [w["window_start_ms"] for w in got["windows"]] == starts
        for window in got["windows"]:
            oracle_window = oracle.windows.get((channel_id, window["window_start_ms"]))
            expected = {n: getattr(oracle_window, n) if oracle_window else 0 for n in COUNTER_FIELDS}
            assert {n: window[n] for n in COUNTER_FIELDS} == expected
            assert window["final"] is (oracle_window is not None)
        assert got["alerts"] == []
    page = ok(pipe, f"/api/v1/channels?campaign={CAMPAIGN}&limit=500&windows=30")
    for item in page["items"]:
        want = oracle.channels[item["channel_id"]]
        span = (want.last_ts_ms // MINUTE) - (want.first_ts_ms // MINUTE) + 1
        assert len(item["spark"]) == min(30, span)
        assert sum(p["gmv_vnd"] for p in item["spark"]) == sum(
            w.gmv_vnd
            for (cid, start), w in oracle.windows.items()
            if cid == item["channel_id"] and start >= item["spark"][0]["window_start_ms"]
        )


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/channels?sort=price", "sort"),
        ("/api/v1/channels?order=up", "order"),
        ("/api/v1/channels?limit=0", "limit"),
        ("/api/v1/channels?limit=ten", "limit"),
        ("/api/v1/channels?limit=501", "limit"),
        ("/api/v1/channels?cursor=not-a-cursor", "cursor"),
        ("/api/v1/channels?windows=61", "windows"),
        ("/api/v1/channels/ocop-live-01?windows=0", "windows"),
        (f"/api/v1/campaigns/{CAMPAIGN}?minutes=x", "minutes"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(fair: tuple[Pipeline, Oracle], path: str, parameter: str) -> None:
    status, body = get(fair[0], path)
    assert status == 400, body
    assert body["error"] == "bad_parameter" and body["parameter"] == parameter and parameter in body["message"]


def test_unknown_ids_are_404_and_old_endpoints_still_answer(fair: tuple[Pipeline, Oracle]) -> None:
    pipe, oracle = fair
    for path in ("/api/v1/channels/no-such-live", "/api/v1/campaigns/no-such-fair", "/api/v1/channels?campaign=nope"):
        status, body = get(pipe, path)
        assert (status, body["error"]) == (404, "not_found"), path
    cursor_of_other_sort = ok(pipe, "/api/v1/channels?sort=orders&limit=1")["next_cursor"]
    status, body = get(pipe, f"/api/v1/channels?sort=gmv&limit=1&cursor={cursor_of_other_sort}")
    assert (status, body["parameter"]) == (400, "cursor")
    assert ok(pipe, "/api/board")["totals"]["gmv_vnd"] == oracle.gmv_vnd
    assert ok(pipe, "/api/totals")["gmv_vnd"] == oracle.gmv_vnd  # one worker owns every partition
    assert set(ok(pipe, "/api/channels")) == set(oracle.channels)
    assert ok(pipe, "/api/v1/alerts") == {"items": []}
    assert ok(pipe, "/api/v1/alerts/history") == {"items": []}


def test_openapi_document_is_valid(fair: tuple[Pipeline, Oracle]) -> None:
    document = ok(fair[0], "/api/v1/openapi.json")
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {"/api/v1/campaigns", "/api/v1/channels/{channel_id}", "/api/v1/alerts/history"}


def test_every_answer_matches_the_openapi_document(fair: tuple[Pipeline, Oracle]) -> None:
    """schemathesis generates requests for every operation (valid and odd parameters) and checks each answer:
    no server error, a documented status and content type, a body matching its schema."""
    port = fair[0].ports[-1]
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    calls: list[str] = []
    for operation in operations:
        # A cursor is opaque: a made-up one is a 400 (test_a_bad_parameter_...); real ones are walked above.
        @given(case=operation.as_strategy().filter(lambda case: "cursor" not in (case.query or {})))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate()
            calls.append(case.path)

        check()
    assert len(calls) >= 6 * 5


def test_status_renders_the_fair_in_the_terminal(fair: tuple[Pipeline, Oracle]) -> None:
    import asyncio

    pipe, oracle = fair
    view = asyncio.run(read_status(pipe.settings()))
    console = Console(record=True, width=240, color_system=None)
    console.print(render_status(view, "gmv"))
    text = console.export_text()
    assert f"{oracle.gmv_vnd:,}" in text and f"{oracle.views:,}" in text and f"{oracle.orders:,}" in text
    assert "26 livestreams: 0 live, 0 silent, 26 ended" in text
    rows = [[c.strip() for c in line.split("│")][1:-1] for line in text.splitlines() if "ocop-live-" in line]
    assert [cells[0] for cells in rows] == sorted(oracle.channels, key=lambda c: (-oracle.channels[c].gmv_vnd, c))
    for cells in rows:
        assert (cells[1], cells[2]) == ("ended", "0"), cells  # status, watching now
        assert cells[7] == f"{oracle.channels[cells[0]].gmv_vnd:,}", cells
        assert len(cells[10]) == min(30, len(view["sparks"][cells[0]])), "a sparkline of its last 30 minutes"
    console = Console(record=True, width=240, color_system=None)
    console.print(render_status(view, "orders", ascending=True))
    ids = [line.split("│")[1].strip() for line in console.export_text().splitlines() if "ocop-live-" in line]
    assert ids == sorted(oracle.channels, key=lambda c: (oracle.channels[c].orders_paid, c))


def test_status_without_a_namespace_finds_one_with_a_campaign(fair: tuple[Pipeline, Oracle]) -> None:
    """``livestream status`` in another terminal during ``make demo`` (its own namespace): a namespace with no
    campaign in Redis gives way to one that has some; a namespace with its own campaign is kept."""
    import asyncio

    from livestream.status import namespaces_with_campaigns, with_data

    pipe, _ = fair
    settings = pipe.settings()
    found = asyncio.run(namespaces_with_campaigns(settings.redis_url))
    assert settings.namespace in found
    assert with_data(settings, None) is settings
    empty = settings.model_copy(update={"namespace": f"{settings.namespace}-empty"})
    chosen = with_data(empty, None)
    assert chosen.namespace != empty.namespace and chosen.namespace in found
    assert asyncio.run(read_status(chosen)) is not None
