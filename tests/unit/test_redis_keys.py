"""Redis keys and hash fields are unambiguous for any id the schema allows (no services)."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from rich.console import Console

from agents.redis_mirror import RedisMirror, refused_for_its_key
from livestream.render import channel_table
from schemas.redis_keys import (
    TEXT_FIELDS,
    RedisKeys,
    alert_field,
    key_part,
    parse_hash,
    parse_key_part,
    split_alert_field,
)
from stream.alerts import RULES
from stream.settings import Settings
from stream.snapshot import ClosedWindow, LiveSnapshot
from stream.state import ChannelState, Counters

PREFIX = "ns:"
ids = st.text(min_size=1, max_size=128)
tricky = st.text(alphabet=":%{}| \n\t\x00ü²aw1mvieers0123456789-", min_size=1, max_size=20)
any_id = st.one_of(ids, tricky)
starts = st.integers(min_value=0, max_value=2**53)


def every_key(channel: str, campaign: str, start_ms: int) -> dict[str, tuple[object, ...]]:
    """Every key the mirror builds for one livestream id, one campaign and one window start, by key -> what."""
    keys = RedisKeys(PREFIX)
    built: dict[str, tuple[object, ...]] = {
        keys.campaigns(): ("campaigns",),
        keys.active_alerts(): ("active_alerts",),
        keys.alert_history(): ("alert_history",),
        keys.channel(channel): ("channel", channel),
        keys.channel_viewers(channel): ("channel_viewers", channel),
        keys.window(channel, start_ms): ("window", channel, start_ms, 60_000),
        keys.window(channel, start_ms, 300_000): ("window", channel, start_ms, 300_000),
        keys.campaign_window(campaign, start_ms): ("campaign_window", campaign, start_ms),
    }
    for what in ("channels", "creators", "gmv", "viewers", "windows"):
        built[keys.campaign(campaign, what)] = ("campaign", campaign, what)  # type: ignore[arg-type]
    assert len(built) == 13, "two families gave the same key for one id"
    return built


@pytest.mark.parametrize(
    ("value", "part"),
    [
        ("ch-01", "ch-01"),
        ("ocop-bac-giang-2023", "ocop-bac-giang-2023"),
        ("a:viewers", "a%3Aviewers"),
        ("a:w1m:60000", "a%3Aw1m%3A60000"),
        ("{x}", "%7Bx%7D"),
        ("with space", "with%20space"),
        ("line\nbreak", "line%0Abreak"),
        ("50%", "50%25"),
        ("a%3Aviewers", "a%253Aviewers"),
        ("ü:ñ", "%C3%BC%3A%C3%B1"),
        ("a|b", "a|b"),
    ],
)
def test_key_part_keeps_ordinary_ids_and_escapes_the_rest(value: str, part: str) -> None:
    assert key_part(value) == part
    assert parse_key_part(part) == value


def test_the_old_collision_is_gone() -> None:
    keys = RedisKeys(PREFIX)
    # Livestream "a:viewers" used to have the hash "ns:channel:a:viewers", the HyperLogLog of livestream "a".
    assert keys.channel("a:viewers") == "ns:channel:a%3Aviewers"
    assert keys.channel_viewers("a") == "ns:channel:a:viewers"
    assert keys.channel("a:w1m:60000") != keys.window("a", 60_000)
    assert keys.campaign("c:gmv", "viewers") != keys.campaign("c", "gmv")
    assert keys.channel("x") == "ns:channel:x"  # ordinary ids: the same keys as before


@given(any_id)
def test_key_part_round_trips_and_is_printable_ascii_without_separators(value: str) -> None:
    part = key_part(value)
    assert parse_key_part(part) == value
    assert all("!" <= c <= "~" for c in part)
    assert not set(part) & set(":{} ")


@given(any_id, any_id)
def test_key_part_is_injective(a: str, b: str) -> None:
    assert (key_part(a) == key_part(b)) == (a == b)


@given(st.lists(st.tuples(any_id, any_id, starts), min_size=2, max_size=6, unique=True))
def test_no_two_ids_or_families_share_a_key(subjects: list[tuple[str, str, int]]) -> None:
    """Distinct (livestream, campaign, window start) triples, through every key family: one key, one meaning."""
    seen: dict[str, tuple[object, ...]] = {}
    for channel, campaign, start_ms in subjects:
        for key, what in every_key(channel, campaign, start_ms).items():
            assert seen.setdefault(key, what) == what, f"{key!r} means both {seen[key]} and {what}"


@given(any_id, any_id, starts)
def test_keys_split_back_into_their_parts(channel: str, campaign: str, start_ms: int) -> None:
    """The structure behind injectivity: split at ``:``, a key gives its literal words and the escaped ids."""
    for key, what in every_key(channel, campaign, start_ms).items():
        parts = key.removeprefix(PREFIX).split(":")
        if what[0] == "channel":
            assert parts == ["channel", key_part(channel)]
        elif what[0] == "channel_viewers":
            assert parts == ["channel", key_part(channel), "viewers"]
        elif what[0] == "window":
            assert parts == ["channel", key_part(channel), f"w{int(str(what[3])) // 60_000}m", str(start_ms)]
        elif what[0] == "campaign":
            assert parts == ["campaign", key_part(campaign), what[2]]
        elif what[0] == "campaign_window":
            assert parts == ["campaign", key_part(campaign), "w1m", str(start_ms)]
        else:
            assert parts in (["campaigns"], ["alerts", "active"], ["alerts", "history"])
        if len(parts) > 1 and parts[0] in ("channel", "campaign"):
            assert parse_key_part(parts[1]) == (channel if parts[0] == "channel" else campaign)


def test_rule_names_have_no_separator() -> None:
    assert RULES
    assert all(rule and "|" not in rule and set(rule) <= set(string.ascii_lowercase + "_") for rule in RULES)


@given(st.sampled_from(RULES), any_id, st.sampled_from(RULES), any_id)
def test_alert_fields_are_unambiguous(rule: str, subject: str, rule2: str, subject2: str) -> None:
    field = alert_field(rule, subject)
    assert split_alert_field(field) == (rule, subject)
    assert (field == alert_field(rule2, subject2)) == ((rule, subject) == (rule2, subject2))


def test_parse_hash_keeps_ids_as_text() -> None:
    raw = {
        b"channel_id": b"42",
        b"campaign": "\u00b2".encode(),  # a digit to str.isdigit, not to int()
        b"creators": b"-7",
        b"active_alerts": b"",
        b"views": b"12",
        b"gmv_vnd": b"-3",
        b"other": "\u00b2".encode(),
        b"note": b"12\n",
    }
    assert parse_hash(raw) == {
        "channel_id": "42",
        "campaign": "\u00b2",
        "creators": "-7",
        "active_alerts": "",
        "views": 12,
        "gmv_vnd": -3,
        "other": "\u00b2",
        "note": "12\n",
    }
    assert {"channel_id", "campaign", "creators"} <= TEXT_FIELDS


@pytest.mark.parametrize(
    ("error", "skipped"),
    [
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), True),
        (ResponseError("WRONGTYPE Key is not a valid HyperLogLog string value."), True),
        (ResponseError("INVALIDOBJ Corrupted HLL object detected"), True),
        (ResponseError("wrong number of arguments for 'sadd' command"), True),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
        (ReadOnlyError("You can't write against a read only replica."), False),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable"), False),
        (ResponseError("BUSY Redis is busy running a script."), False),
        (RedisConnectionError("Connection refused"), False),
        (RuntimeError("not a reply"), False),
    ],
)
def test_only_errors_about_one_key_are_skipped(error: Exception, skipped: bool) -> None:
    assert refused_for_its_key(error) is skipped


def test_tables_show_ids_as_text_not_markup() -> None:
    channels = {
        "[/oops]": {"channel_id": "[/oops]", "creators": "1234", "views": 1500, "gmv_vnd": 10, "ended": 1},
        "[bold]x": {"channel_id": "[bold]x", "creators": "[red]c", "views": 2, "gmv_vnd": 5},
    }
    totals = {"livestreams": 2, "creators": 2, "views": 1502, "gmv_vnd": 15}
    console = Console(record=True, width=300)
    console.print(channel_table("[/camp]", channels, totals))
    text = console.export_text()
    assert "[/oops] (ended)" in text
    assert "[bold]x" in text
    assert "[red]c" in text
    assert "[/camp]: 2 livestreams" in text
    assert "1,500" in text
    assert "1234" in text and "1,234" not in text  # a creator id is not a number


class FakePipeline:
    """Queues any command; ``execute(raise_on_error=False)`` answers each with ``reply(command, key)``."""

    def __init__(self, reply: Callable[[str, str], object]) -> None:
        self.reply = reply
        self.command_stack: list[tuple[tuple[str, ...], dict[str, object]]] = []
        self.scripts: set[object] = set()

    def evalsha(self, sha: str, numkeys: int, key: str, *args: object) -> FakePipeline:
        self.command_stack.append((("EVALSHA", key), {}))
        return self

    def __getattr__(self, name: str) -> Callable[..., FakePipeline]:
        def queue(key: str, *args: object, **kwargs: object) -> FakePipeline:
            self.command_stack.append(((name.upper(), key), {}))
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[object]:
        assert raise_on_error is False
        stack, self.command_stack = self.command_stack, []
        return [self.reply(args[0], args[1]) for args, _ in stack]


class FakeRedis:
    def __init__(self, reply: Callable[[str, str], object]) -> None:
        self.reply = reply

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self.reply)


def pending_snapshot() -> LiveSnapshot:
    live = LiveSnapshot()
    for channel_id in ("ok", "bad"):
        live.update(ChannelState(channel_id=channel_id, campaign="c", creators=["k"], windows={0: Counters(views=1)}))
        live.add_viewers({channel_id: ["u1", "u2"]})
        live.pending_closed.append(ClosedWindow(channel_id, "c", 0, 60_000, Counters(views=1)))
    return live


def test_a_command_refused_for_its_key_is_dropped_and_the_rest_goes_on() -> None:
    live = pending_snapshot()
    mirror = RedisMirror(Settings(namespace="ns"), live)
    written: list[tuple[str, str]] = []

    def reply(command: str, key: str) -> object:
        if "channel:bad" in key:
            return ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
        written.append((command, key))
        return 2 if command in ("PFCOUNT", "PFADD") else 1

    mirror.client = FakeRedis(reply)  # type: ignore[assignment]
    asyncio.run(mirror.flush())
    # bad: PFADD, PFCOUNT, its hash (EVALSHA), 2 x (window EVALSHA, EXPIRE)
    assert (live.redis_flushes, live.redis_errors) == (1, 7)
    assert not live.dirty and not live.pending_viewers and not live.pending_closed and not live.pending_windows
    assert ("EVALSHA", "ns:channel:ok") in written
    assert ("PFMERGE", "ns:campaign:c:viewers") in written
    assert live.unique_viewers == {"ok": 2}
    assert live.campaign_unique_viewers == {"c": 2}


@pytest.mark.parametrize(
    "error",
    [OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), ResponseError("MISCONF no disk")],
)
def test_redis_refusing_every_write_keeps_the_work_for_the_next_tick(error: Exception) -> None:
    live = pending_snapshot()
    mirror = RedisMirror(Settings(namespace="ns"), live)
    mirror.client = FakeRedis(lambda command, key: error if command in ("HSET", "EVALSHA") else 1)  # type: ignore[assignment]
    asyncio.run(mirror.flush())
    assert (live.redis_flushes, live.redis_errors) == (0, 1)
    assert live.dirty == {"ok", "bad"}
    assert set(live.pending_viewers) == {"ok", "bad"}
    assert len(live.pending_closed) == 2


def test_tables_written_to_a_pipe_are_not_cut_to_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make demo`` without a terminal (CI, a log file): the end table keeps its cells whole."""
    from livestream.render import WIDE_OUTPUT_COLUMNS, channel_table, console

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)
    out = console()
    assert out.width == WIDE_OUTPUT_COLUMNS
    channels = {"ocop-live-01": {"views": 123_456, "orders_paid": 12, "gmv_vnd": 1_234_567_890, "creators": "x"}}
    totals = {"livestreams": 1, "creators": 1, "views": 123_456, "orders_paid": 12, "gmv_vnd": 1_234_567_890}
    with out.capture() as captured:
        out.print(channel_table("ocop-bac-giang-2023", channels, totals))
    text = captured.get()
    assert "ocop-live-01" in text and "1,234,567,890" in text
