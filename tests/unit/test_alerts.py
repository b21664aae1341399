"""Alert rules and campaign windows in the pure core: thresholds, once-only episodes, and the scripted scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import Comment, Event, LiveEnd, Order, View
from stream import campaign
from stream.alerts import (
    AlertRules,
    active_alert_record,
    evaluate_closed_window,
    evaluate_gap,
    evaluate_silence,
    load_rules,
    resolve_if_active,
    stream_down_gap_ms,
)
from stream.replay.generator import FairReplay
from stream.replay.incidents import ScriptedReplay
from stream.replay.profile import OCOP_FAIR, scaled
from stream.state import (
    ChannelState,
    Counters,
    FoldEffects,
    WindowSpec,
    apply_record,
    close_windows,
    decode_state,
    encode_state,
    watermark,
)
from tests.alert_scenario import SCALE, SEED, build_scenario, incident_changes, simulate

ROOT = Path(__file__).resolve().parents[2]
BASE = 1_687_572_000_000
SPEC = WindowSpec()
MINUTE = 60_000


def event(kind: type[Event], n: int, ts: int, **fields: object) -> Event:
    common = {
        "event_id": f"{kind.__name__}-{n}-{ts}",
        "channel_id": "c1",
        "creator_id": "host",
        "campaign": "fair",
        "user_id": f"u{n}",
        "ts_ms": ts,
    }
    return kind(**{**common, **fields})  # type: ignore[arg-type]


class Folder:
    """Feeds events one record at a time and evaluates the rules the way the agent does."""

    def __init__(self, rules: AlertRules | None = None) -> None:
        self.state = ChannelState(channel_id="c1")
        self.rules = rules or AlertRules()
        self.offset = -1
        self.changes: list[tuple[str, str, int]] = []

    def feed(self, events: list[Event]) -> None:
        self.offset += 1
        apply_record(self.state, events, 0, self.offset, SPEC, FoldEffects())
        back = resolve_if_active(self.state, self.rules)
        if back:
            self.changes.append((back.rule, back.status, back.window_start_ms))
        for window in close_windows(self.state, watermark(self.state, SPEC), SPEC):
            for change in evaluate_closed_window(self.state, window, self.rules, window.size_ms == MINUTE):
                self.changes.append((change.rule, change.status, change.window_start_ms))
        self.state = decode_state(encode_state(self.state))  # rule memory survives the table round trip


def test_shipped_rules_file_is_the_defaults() -> None:
    assert load_rules(ROOT / "deploy" / "alerts.toml") == AlertRules()
    assert load_rules(None) == AlertRules()


def test_rules_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[viewer_drop]\ndrop_percent = 10\n")
    with pytest.raises(ValueError, match="drop_percent"):
        load_rules(bad)
    bad.write_text("[order_surge]\nfactor = 'lots'\n")
    with pytest.raises(ValueError, match="factor"):
        load_rules(bad)
    partial = tmp_path / "partial.toml"
    partial.write_text("[stream_down]\nsilence_s = 30\n")
    rules = load_rules(partial)
    assert rules.stream_down.silence_s == 30 and rules.viewer_drop == AlertRules().viewer_drop


def test_payment_trouble_fires_once_and_resolves() -> None:
    folder = Folder()
    n = 0
    for minute in range(12):
        events: list[Event] = []
        for _ in range(10):
            n += 1
            status = "cancelled" if 3 <= minute < 5 else "paid"
            ts = BASE + minute * MINUTE + n % 50 * 1000
            common = {"order_id": f"o{n}", "product_id": "p", "quantity": 1, "amount_vnd": 1000}
            events.append(event(Order, n, ts, status="placed", **common))
            events.append(event(Order, n, ts + 1, status=status, **common))
        folder.feed(events)
    troubles = [c for c in folder.changes if c[0] == "payment_trouble"]
    assert [c[1] for c in troubles] == ["firing", "resolved"]
    assert len({c[2] for c in troubles}) == 1, "one episode, one key"


def test_comment_spam_by_user_and_by_text() -> None:
    folder = Folder()
    for minute in range(4):
        t0 = BASE + minute * MINUTE
        events: list[Event] = [event(Comment, i, t0 + i * 100, text=f"hello {i}") for i in range(30)]
        if minute == 1:  # one user, 12 comments
            events += [event(Comment, 999, t0 + 5000 + i, text=f"buy {i}") for i in range(12)]
        if minute == 2:  # 60 users, the same text (case and spacing folded)
            events += [
                event(Comment, 500 + i, t0 + 7000 + i, text=" SALE  now " if i % 2 else "sale now") for i in range(60)
            ]
        folder.feed(sorted(events, key=lambda e: e.ts_ms))
    folder.feed([event(View, 1, BASE + 6 * MINUTE)])
    spam = [c for c in folder.changes if c[0] == "comment_spam"]
    # minute 1 fires (one user), minute 2 still holds (one text): the same episode; minute 3 is clean: resolved
    assert spam == [("comment_spam", "firing", BASE + MINUTE), ("comment_spam", "resolved", BASE + MINUTE)]


def test_comment_spam_by_repeated_text_alone() -> None:
    folder = Folder()
    t0 = BASE
    folder.feed([event(Comment, i, t0 + i, text=" SALE  now " if i % 2 else "sale NOW") for i in range(60)])
    folder.feed([event(View, 1, BASE + 3 * MINUTE)])
    assert folder.changes == [("comment_spam", "firing", BASE)]
    folder.feed([event(View, 2, BASE + 5 * MINUTE)])  # closes minute 3: a clean minute resolves it
    assert folder.changes == [("comment_spam", "firing", BASE), ("comment_spam", "resolved", BASE)]


def test_stream_down_needs_viewers_and_a_live_stream() -> None:
    rules = AlertRules()
    state = ChannelState(channel_id="c1")
    views = [event(View, i, BASE + i) for i in range(30)]
    apply_record(state, views, 0, 0, SPEC, FoldEffects())
    assert evaluate_silence(state, BASE + 129_000, rules) is None, "60 s of silence plus 70 s of allowed skew"
    fired = evaluate_silence(state, BASE + 130_100, rules)
    assert fired is not None and fired.status == "firing" and fired.window_start_ms == BASE
    assert evaluate_silence(state, BASE + 190_000, rules) is None, "fires once per episode"
    apply_record(state, [event(View, 99, BASE + 200_000)], 0, 1, SPEC, FoldEffects())
    back = resolve_if_active(state, rules)
    assert back is not None and back.status == "resolved" and back.alert_id == fired.alert_id

    ended = ChannelState(channel_id="c1")
    apply_record(ended, [*views, event(LiveEnd, 0, BASE + 100)], 0, 0, SPEC, FoldEffects())
    assert evaluate_silence(ended, BASE + 600_000, rules) is None, "an ended livestream is not down"
    quiet = ChannelState(channel_id="c1")
    apply_record(quiet, views[:5], 0, 0, SPEC, FoldEffects())
    assert evaluate_silence(quiet, BASE + 600_000, rules) is None, "too few viewers to matter"


def test_stream_down_resolves_when_the_stream_ends() -> None:
    rules = AlertRules()
    state = ChannelState(channel_id="c1")
    apply_record(state, [event(View, i, BASE + i) for i in range(30)], 0, 0, SPEC, FoldEffects())
    assert evaluate_silence(state, BASE + 140_000, rules) is not None
    apply_record(state, [event(LiveEnd, 0, BASE + 150_000)], 0, 1, SPEC, FoldEffects())
    back = resolve_if_active(state, rules)
    assert back is not None and back.status == "resolved" and "ended" in back.summary
    assert state.alerts == {}


def test_the_fair_alone_raises_no_livestream_alert() -> None:
    replay = ScriptedReplay.of(FairReplay(scaled(OCOP_FAIR, SCALE), SEED))
    changes = simulate(replay)
    assert incident_changes(changes) == {}
    milestones = [(c.status, c.threshold) for c in changes if c.rule == "gmv_milestone"]
    assert milestones == [("firing", 100_000_000), ("resolved", 100_000_000)]


def test_scripted_incidents_fire_exactly_the_expected_alerts_once() -> None:
    scenario = build_scenario()
    changes = simulate(scenario.replay)
    got = incident_changes(changes)
    assert {key: statuses for key, statuses in got.items()} == {
        key: ["firing", "resolved"] for key in scenario.expected()
    }


def counters(gmv: int) -> Counters:
    return Counters(views=1, orders_paid=1, gmv_vnd=gmv)


def test_campaign_window_waits_for_every_partition_and_counts_each_livestream_once() -> None:
    rules = AlertRules()
    state = campaign.CampaignState()
    offset = 0

    def feed(record: campaign.CampaignInput) -> campaign.CampaignOutput | bool:
        nonlocal offset
        offset += 1
        return campaign.apply_input(state, record, offset, 2, MINUTE, rules)

    feed(campaign.ChannelWindowCopy("a", "fair", BASE, counters(10)))
    feed(campaign.ChannelWindowCopy("a", "fair", BASE, counters(10)))  # sent again after a crash
    out = feed(campaign.PartitionProgress(0, BASE))
    assert out and out.windows == [], "partition 1 has not reported"
    feed(campaign.ChannelWindowCopy("b", "fair", BASE, counters(5)))
    out = feed(campaign.PartitionProgress(1, campaign.SETTLED_ALL))
    assert out and [(w.start_ms, w.counters.gmv_vnd, w.livestreams) for w in out.windows] == [(BASE, 15, 2)]
    out = feed(campaign.ChannelWindowCopy("c", "fair", BASE, counters(7)))  # late for that minute: a correction
    assert out and [
        (w.start_ms, w.counters.gmv_vnd, w.livestreams, w.revision, w.gmv_to_date_vnd) for w in out.windows
    ] == [(BASE, 22, 3, 1, 22)]
    assert state.ignored_windows == 1 and state.corrections == 1
    out = feed(campaign.ChannelWindowCopy("c", "fair", BASE, counters(7)))  # the same copy again: ignored
    assert out and out.windows == [] and state.ignored_windows == 2
    assert campaign.apply_input(state, campaign.PartitionProgress(0, BASE), offset, 2, MINUTE, rules) is False
    back = campaign.decode_state(campaign.encode(state))
    assert back == state


def test_gmv_milestones_fire_once_and_resolve_with_the_next_window() -> None:
    rules = AlertRules()
    state = campaign.CampaignState()
    changes = []
    for i, gmv in enumerate([60_000_000, 60_000_000, 10_000_000, 400_000_000, 1]):
        copy = campaign.ChannelWindowCopy("a", "fair", BASE + i * MINUTE, counters(gmv))
        campaign.apply_input(state, copy, 2 * i, 1, MINUTE, rules)
        out = campaign.apply_input(state, campaign.PartitionProgress(0, BASE + i * MINUTE), 2 * i + 1, 1, MINUTE, rules)
        assert out
        changes += [(c.status, c.threshold, c.window_start_ms) for c in out.alerts]
    assert changes == [
        ("firing", 100_000_000, BASE + MINUTE),
        ("resolved", 100_000_000, BASE + MINUTE),
        ("firing", 500_000_000, BASE + 3 * MINUTE),
        ("resolved", 500_000_000, BASE + 3 * MINUTE),
    ]


def test_a_silence_read_in_one_go_still_fires_and_resolves_once() -> None:
    """A worker catching up reads the silence and its end in one batch: no clock saw it, the events show it."""
    rules = AlertRules()
    state = ChannelState(channel_id="c1")
    views = [event(View, i, BASE + i) for i in range(30)]
    effects = FoldEffects(gap_ms=stream_down_gap_ms(rules))
    apply_record(state, [*views, event(View, 99, BASE + 200_000)], 0, 0, SPEC, effects)
    changes = [c for gap in effects.gaps for c in evaluate_gap(state, gap, rules)]
    assert [(c.status, c.window_start_ms) for c in changes] == [("firing", BASE), ("resolved", BASE)]
    assert changes[0].alert_id == changes[1].alert_id and state.alerts == {}

    live = ChannelState(channel_id="c1")  # the live check fired first: the gap adds nothing, the resolve follows
    apply_record(live, views, 0, 0, SPEC, FoldEffects())
    assert evaluate_silence(live, BASE + 140_000, rules) is not None
    effects = FoldEffects(gap_ms=stream_down_gap_ms(rules))
    apply_record(live, [event(View, 99, BASE + 200_000)], 0, 1, SPEC, effects)
    assert [c for gap in effects.gaps for c in evaluate_gap(live, gap, rules)] == []
    back = resolve_if_active(live, rules)
    assert back is not None and back.status == "resolved"


def test_active_alert_record_has_the_key_of_its_firing_record() -> None:

    state = ChannelState(channel_id="c1")
    apply_record(state, [event(View, i, BASE + i) for i in range(30)], 0, 0, SPEC, FoldEffects())
    fired = evaluate_silence(state, BASE + 140_000, AlertRules())
    assert fired is not None
    record = active_alert_record(
        "stream_down", state.alerts["stream_down"], channel_id="c1", campaign="fair", emitted_at_ms=0
    )
    assert record.alert_id == fired.alert_id and record.status == "firing" and record.summary == fired.summary


def test_an_idle_claim_older_than_the_data_does_not_release_a_campaign_window() -> None:
    """A fresh worker idle before a burst: partition 1 reported idle before the burst was produced, so partition
    0's data for the minute cannot be emitted on that claim; it waits for partition 1's own records."""
    rules = AlertRules()
    state = campaign.CampaignState()
    offset = 0

    def feed(record: campaign.CampaignInput) -> list[tuple[int, int, int]]:
        nonlocal offset
        offset += 1
        out = campaign.apply_input(state, record, offset, 2, MINUTE, rules)
        assert out is not False
        return [(w.start_ms, w.counters.gmv_vnd, w.livestreams) for w in out.windows]

    assert feed(campaign.PartitionProgress(0, campaign.SETTLED_ALL, idle=True, as_of_wall_ms=1_000)) == []
    assert feed(campaign.PartitionProgress(1, campaign.SETTLED_ALL, idle=True, as_of_wall_ms=1_000)) == []
    feed(campaign.ChannelWindowCopy("a", "fair", BASE, counters(10)))
    assert feed(campaign.PartitionProgress(0, BASE, as_of_wall_ms=5_000)) == [], "partition 1's claim is older"
    feed(campaign.ChannelWindowCopy("b", "fair", BASE, counters(5)))
    assert feed(campaign.PartitionProgress(1, BASE, as_of_wall_ms=5_100)) == [(BASE, 15, 2)]

    # A claim made after the data was produced is trusted: partition 1 idle again, partition 0 moves on.
    feed(campaign.ChannelWindowCopy("a", "fair", BASE + MINUTE, counters(3)))
    assert feed(campaign.PartitionProgress(1, campaign.SETTLED_ALL, idle=True, as_of_wall_ms=7_000)) == []
    assert feed(campaign.PartitionProgress(0, BASE + MINUTE, as_of_wall_ms=8_000)) == []
    assert feed(campaign.PartitionProgress(1, campaign.SETTLED_ALL, idle=True, as_of_wall_ms=9_000)) == [
        (BASE + MINUTE, 3, 1)
    ]


def test_a_copy_older_than_every_kept_campaign_minute_is_counted_as_dropped() -> None:
    from stream.campaign import CampaignState, ChannelWindowCopy, PartitionProgress, apply_input

    state, rules, minute = CampaignState(), AlertRules(), 60_000
    offset = 0

    def feed(record: ChannelWindowCopy | PartitionProgress) -> None:
        nonlocal offset
        offset += 1
        apply_input(state, record, offset, 1, minute, rules)

    feed(ChannelWindowCopy("a", "c", 10 * minute, Counters(views=1)))
    feed(PartitionProgress(0, 10 * minute))
    assert state.emitted_through == {"c": 10 * minute}
    feed(ChannelWindowCopy("a", "c", 10 * minute, Counters(views=1)))  # sent again after a crash: a repeat
    assert (state.ignored_windows, state.dropped_windows) == (1, 0)
    feed(ChannelWindowCopy("b", "c", 5 * minute, Counters(views=1)))  # before the first emitted minute
    assert (state.ignored_windows, state.dropped_windows) == (2, 1)


def test_every_revision_of_a_campaign_minute_emitted_in_one_batch_keeps_its_own_counters() -> None:
    """A minute emitted for livestream a, then a late copy of livestream b for the same minute, in one aggregator
    batch (its outputs encoded after the batch): revision 0 still says a's counters, revision 1 a's plus b's."""
    rules = AlertRules()
    state = campaign.CampaignState()
    windows: list[campaign.CampaignWindow] = []
    inputs: list[campaign.CampaignInput] = [
        campaign.ChannelWindowCopy("a", "fair", BASE, counters(10)),
        campaign.PartitionProgress(0, BASE),
        campaign.ChannelWindowCopy("b", "fair", BASE, counters(5)),
    ]
    for offset, record in enumerate(inputs):
        out = campaign.apply_input(state, record, offset, 1, MINUTE, rules)
        assert out is not False
        windows += out.windows
    assert [(w.revision, w.counters.gmv_vnd, w.counters.views, w.livestreams, w.gmv_to_date_vnd) for w in windows] == [
        (0, 10, 1, 1, 10),
        (1, 15, 2, 2, 15),
    ]
