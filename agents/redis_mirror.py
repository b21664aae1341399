"""Mirrors the live snapshot into Redis, the serving layer: soon after each processed batch (at most one flush per
``redis_flush_interval_s``), and at least every that long while anything is pending.

Only absolute values are written (HSET of current totals, ZADD of GMV, PFADD of viewer ids, SADD of
memberships), in pipelined round trips, so replays and retries can never double count in Redis. If Redis is
unreachable, or refuses writes as a whole (out of memory, read-only replica, loading, ...), the pending work is
kept and retried on the next tick; processing never waits for Redis. A command refused for its own key (e.g.
``WRONGTYPE`` from stale data under that key) is logged, counted in ``redis_errors`` and dropped; every other
write of the flush still takes effect, so one bad key never stops the mirror for the other livestreams.

Values never go backwards. Two owners of a partition overlap during a rebalance (the old one's flush still in
flight, the new one re-mirroring its restored tables, which can be older than what the old one wrote), and a paused
worker can wake up with old values: every livestream hash and window hash is written by :data:`GUARDED_HSET`, a Lua
script that keeps the stored hash when it is newer. A livestream's hash carries ``state_partition`` and
``state_offset`` (the offset of the last record its state applied, in its partition: offsets of one partition only
grow as its records are applied); a write with a lower offset in the same partition changes nothing, nor does an
open window's write over a final one.

The key layout and its escaping are in :mod:`schemas.redis_keys` (readers import it from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import faust
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ExecAbortError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from agents.freeze import GUARD
from schemas.alerts import AlertRecord
from schemas.redis_keys import (
    WINDOW_TTL_S,
    RedisKeys,
    alert_field,
)
from stream.alerts import RULES, active_alert_record
from stream.settings import Settings
from stream.snapshot import ChannelView, ClosedWindow, LiveSnapshot
from stream.state import Counters

log = logging.getLogger(__name__)
PFADD_CHUNK = 5_000
LOSS_CHECK_S = 2.0
"""How often a mirror checks that Redis still holds its marker key (:meth:`RedisMirror.check_loss`)."""
MARKER_TTL_S = 86_400
PIPELINE_CHUNK = 4_000
"""Commands per pipelined round trip: bounds the memory a flush of many livestreams needs."""
MERGE_CHUNK = 500
REPORTED_KEYS_MAX = 10_000
"""Keys whose refused writes were logged at warning level (then at debug level), remembered up to this many."""

CHANNEL_RULES = tuple(rule for rule in RULES if rule != "gmv_milestone")

GUARDED_HSET = """
local stored = redis.call('HMGET', KEYS[1], 'state_partition', 'state_offset', 'final')
if stored[3] == '1' and ARGV[3] ~= '1' then
  return 0
end
if ARGV[1] ~= '' and stored[1] == ARGV[1] and stored[2] and tonumber(stored[2]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return 1
"""
"""HSET of ``KEYS[1]`` unless what it holds is newer. ARGV: the state partition ('' for none), the state offset,
the final flag ('1' for a final window, else '0'), then the field/value pairs. The stored hash is newer when it is
a final window and this write is not, or when it names the same state partition with a higher offset. One key per
call (Redis Cluster puts keys in slots)."""


def history_entry(record: AlertRecord, resolved_at_ms: int | None = None, resolved: bool = False) -> bytes:
    """The ``P alerts:history`` value of an alert: its firing record, or (``resolved``) marked resolved."""
    entry: dict[str, Any] = msgspec.to_builtins(record)
    if resolved:
        entry.update(status="resolved", resolved_at_ms=resolved_at_ms)
    return msgspec.json.encode(entry)


def channel_alert_records(state: ChannelView) -> dict[str, AlertRecord]:
    """The active alerts of a livestream as records, by ``rule|channel`` field."""
    return {
        alert_field(rule, state.channel_id): active_alert_record(
            rule, alert, channel_id=state.channel_id, campaign=state.campaign, emitted_at_ms=0
        )
        for rule, alert in (state.alerts or {}).items()
    }


def channel_hash(state: ChannelView, unique_viewers: int) -> dict[Any, str | int]:
    fields: dict[Any, str | int] = dict(state.totals.as_dict())
    fields.update(
        channel_id=state.channel_id,
        campaign=state.campaign,
        creators=",".join(state.creators),
        concurrent_viewers=max(0, state.concurrent),
        peak_concurrent_viewers=state.peak_concurrent,
        unique_viewers=unique_viewers,
        first_ts_ms=state.first_ts_ms,
        last_ts_ms=state.last_ts_ms,
        late_events=state.late_events,
        ended=int(state.ended_ms >= 0),
        active_alerts=",".join(sorted(state.alerts or ())),
        updated_at_ms=int(time.time() * 1000),
    )
    return fields


def window_hash(counters: Counters, start_ms: int, size_ms: int, final: bool) -> dict[Any, str | int]:
    fields: dict[Any, str | int] = dict(counters.as_dict())
    fields.update(window_start_ms=start_ms, window_end_ms=start_ms + size_ms, final=int(final))
    return fields


_SERVER_WIDE_ERRORS = (OutOfMemoryError, ReadOnlyError, NoPermissionError, TryAgainError, ClusterDownError, AskError)
_SERVER_WIDE_CODES = frozenset({"BUSY", "MISCONF", "NOREPLICAS", "LOADING", "MASTERDOWN", "UNBLOCKED"})


def refused_for_its_key(error: BaseException) -> bool:
    """True if a command's error concerns only the key it wrote (``WRONGTYPE``, a corrupt HyperLogLog, a bad
    argument): retrying cannot help, so the write is dropped. False if Redis refuses writes as a whole (out of
    memory, read-only replica, loading, busy script, no permission, ...) or the error is not a command's reply:
    the flush is then retried on the next tick."""
    if not isinstance(error, ResponseError) or isinstance(error, (*_SERVER_WIDE_ERRORS, ExecAbortError)):
        return False
    message = str(error.args[0]) if error.args else ""
    return message.split(" ", 1)[0] not in _SERVER_WIDE_CODES


class _Batch:
    """Commands for one pipelined round trip (no transaction), each queued with the key it writes, so that a
    command refused for its key is reported and skipped while the others take effect."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.pipe: Pipeline = client.pipeline(transaction=False)
        self.keys: list[str] = []

    def on(self, key: str) -> Pipeline:
        """The pipeline, to queue exactly one command on ``key``."""
        self.keys.append(key)
        return self.pipe

    def script(self, key: str, script: Any, args: list[Any]) -> None:
        """Queue ``script`` (registered with the client) on ``key``; the pipeline makes sure Redis knows it (SCRIPT
        EXISTS, and LOAD if not: after a restart) before it runs the batch."""
        pipe = self.on(key)
        pipe.scripts.add(script)
        pipe.evalsha(script.sha, 1, key, *args)

    def __len__(self) -> int:
        return len(self.keys)


class RedisMirror:
    def __init__(self, settings: Settings, live: LiveSnapshot) -> None:
        self.live = live
        self.keys = RedisKeys(settings.redis_prefix)
        self.window_size_ms = settings.window_size_s * 1000
        self.client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self._failing = False
        self._campaigns_with_alerts: dict[str, AlertRecord] = {}
        self._alerts_written: dict[str, AlertRecord] = {}
        self._firing_records: dict[str, AlertRecord] = {}
        self.marker = self.keys.mirror_marker(uuid.uuid4().hex)
        """This mirror's key in Redis (see :meth:`check_loss`)."""
        self._marked = False
        self._evicted_keys: int | None = None
        """Redis's ``evicted_keys`` at the last loss check (None before the first)."""
        self._checked_at = -LOSS_CHECK_S
        """Firing records written to the history by :meth:`_write_history`, by alert id, until resolved."""
        """Active livestream alerts this mirror wrote, by ``rule|subject`` field: one missing later resolved."""
        self._reported: set[str] = set()
        self._guarded_hset = self.client.register_script(GUARDED_HSET)

    async def check_loss(self) -> bool:
        """Every ``LOSS_CHECK_S``: whether Redis lost this mirror's writes: its marker key is gone (a restart without
        its files, ``FLUSHALL``, eviction of the marker), or Redis evicted keys since the last check (``INFO stats``
        ``evicted_keys`` grew: any key of ours may be gone). Then every livestream this worker owns, its active
        alerts and its campaign alerts are written again by the next flush, and it is logged and counted
        (``livestream_redis_rebuilds_total``). Also notes whether Redis may evict at all (``maxmemory-policy``;
        ``livestream_redis_evicting``, a warning when it starts to). Closed windows, campaign minutes and
        unique-viewer estimates written before the loss are not rebuilt from memory."""
        now = time.monotonic()
        if now - self._checked_at < LOSS_CHECK_S:
            return False
        self._checked_at = now
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.marker, b"1", ex=MARKER_TTL_S, nx=True)
        pipe.expire(self.marker, MARKER_TTL_S)
        pipe.info("stats")
        pipe.info("memory")
        created, _, stats, memory = await pipe.execute()
        evicted = int(stats.get("evicted_keys", 0))
        evicting = str(memory.get("maxmemory_policy", "noeviction")) != "noeviction"
        if evicting and not self.live.redis_evicting:
            log.warning(
                "Redis may evict keys (maxmemory-policy %s): served values can disappear; set noeviction. Evictions "
                "are watched and answered by writing this worker's livestreams again",
                memory.get("maxmemory_policy"),
            )
        self.live.redis_evicting = evicting
        seen_evicted, self._evicted_keys = self._evicted_keys, evicted
        lost = self._marked and (bool(created) or (seen_evicted is not None and evicted > seen_evicted))
        self._marked = True
        if lost:
            live = self.live
            live.dirty |= set(live.channels)
            live.campaign_alerts_dirty = True
            self._alerts_written.clear()
            self._campaigns_with_alerts = {}
            live.redis_rebuilds += 1
            log.warning(
                "Redis lost this worker's keys (%s): writing %d livestreams and their alerts again",
                "its marker is gone: restarted without its data or flushed" if created else "it evicted keys",
                len(live.channels),
            )
        return lost

    async def flush(self) -> None:
        """Write everything pending; if Redis is unreachable or refuses every write, give it back to the snapshot
        for the next tick (writes refused for their own key are dropped in :meth:`_run`)."""
        rebuilding = False
        try:
            rebuilding = await self.check_loss()
        except Exception as exc:  # unreachable: the writes below fail too and are kept for the next tick
            log.debug("Redis loss check failed: %r", exc)
        started = time.monotonic()
        dirty, viewers, closed = self.live.take_dirty()
        campaign_windows, self.live.pending_campaign = self.live.pending_campaign, []
        campaign_alerts, self.live.campaign_alerts_dirty = self.live.campaign_alerts_dirty, False
        transitions, self.live.alert_transitions = self.live.alert_transitions, []
        if (
            not dirty
            and not viewers
            and not closed
            and not campaign_windows
            and not campaign_alerts
            and not transitions
        ):
            return
        try:
            await self._write_history(transitions)
            await self._write(dirty, viewers, closed)
            await self._write_campaign(campaign_windows, campaign_alerts)
        except Exception as exc:
            self.live.restore(dirty, viewers, closed)
            self.live.pending_campaign = campaign_windows + self.live.pending_campaign
            self.live.campaign_alerts_dirty |= campaign_alerts
            self.live.alert_transitions, newer = [], self.live.alert_transitions
            self.live.add_transitions(transitions + newer)
            self.live.redis_errors += 1
            if not self._failing:
                log.warning("Redis write failed, will retry every tick: %r", exc)
            self._failing = True
            return
        if self._failing:
            # Writes that failed are redone above; every livestream's hash is written once more as well (absolute
            # values), in case the server lost acknowledged writes while it was away.
            self.live.dirty |= set(self.live.channels)
            self.live.changed.set()
            log.info("Redis reachable again; caught up")
        self._failing = False
        self.live.redis_flushes += 1
        if rebuilding:
            log.warning("Redis rebuilt from this worker's state in %.2f s", time.monotonic() - started)

    def _hset_unless_newer(
        self, batch: _Batch, key: str, fields: dict[Any, str | int], partition: int | None, offset: int, final: bool
    ) -> None:
        """Queue :data:`GUARDED_HSET` of ``fields`` into ``key``: ``partition``/``offset`` order two writes of one
        livestream and are stored with them as ``state_partition``/``state_offset`` (None: not ordered by them); a
        final window is never replaced by an open one."""
        args: list[Any] = ["" if partition is None else partition, offset, 1 if final else 0]
        for name, value in fields.items():
            args += (name, value)
        if partition is not None:
            args += ("state_partition", partition, "state_offset", offset)
        batch.script(key, self._guarded_hset, args)

    async def _run(self, batch: _Batch) -> list[Any]:
        """Execute ``batch``: its replies in order, a refused command's reply being its exception. A command
        refused for its key is logged and counted in ``redis_errors``; anything else raises (connection lost,
        Redis refusing writes as a whole) so that :meth:`flush` keeps the work for the next tick."""
        if not batch.keys:
            return []
        stack = batch.pipe.command_stack
        if len(stack) != len(batch.keys):
            raise RuntimeError(f"{len(stack)} commands queued for {len(batch.keys)} keys")
        commands = [str(args[0]) for args, _ in stack]
        GUARD.check()  # a worker that stood still past its session must not write stale counters
        results: list[Any] = await batch.pipe.execute(raise_on_error=False)
        failed = [i for i, result in enumerate(results) if isinstance(result, Exception)]
        for i in failed:
            if not refused_for_its_key(results[i]):
                raise results[i]
        for i in failed:
            self._refused(commands[i], batch.keys[i], results[i])
        return results

    def _refused(self, command: str, key: str, error: Exception) -> None:
        self.live.redis_errors += 1
        if key in self._reported:
            log.debug("Redis refused %s %r again, skipped: %s", command, key, error)
            return
        if len(self._reported) >= REPORTED_KEYS_MAX:
            self._reported.clear()
        self._reported.add(key)
        log.warning(
            "Redis refused %s %r, skipped (the other writes go on; repeats are logged at debug level): %s",
            command,
            key,
            error,
        )

    async def _write(self, dirty: set[str], viewers: dict[str, list[str]], closed: list[ClosedWindow]) -> None:
        keys, live = self.keys, self.live
        # The states as of now: the fold replaces (never mutates) a channel's state object after each batch, so
        # these references stay consistent with the viewer ids taken with them while the writes below await.
        states = {cid: live.channels[cid] for cid in dirty if cid in live.channels}
        windows_written = {cid: live.pending_windows[cid] for cid in states if cid in live.pending_windows}
        campaigns: dict[str, list[str]] = {}
        for channel_id, state in states.items():
            campaigns.setdefault(state.campaign, []).append(channel_id)

        # Viewers: each id once per flush into its livestream's HyperLogLog; the campaign's HyperLogLog is the union
        # of its livestreams' (PFMERGE), which gives the same registers as adding every id to it. A livestream
        # whose PFADD was refused (its key holds something else) is left out of the union, so a refused PFMERGE
        # concerns the campaign's own key.
        refused: set[str] = set()
        batch = _Batch(self.client)
        for channel_id, ids in viewers.items():
            key = keys.channel_viewers(channel_id)
            unique = list(dict.fromkeys(ids))
            for i in range(0, len(unique), PFADD_CHUNK):
                batch.on(key).pfadd(key, *unique[i : i + PFADD_CHUNK])
            if len(batch) >= PIPELINE_CHUNK:
                refused |= await self._refused_keys(batch)
                batch = _Batch(self.client)
        refused |= await self._refused_keys(batch)
        merge_into: dict[str, list[str]] = {}
        for channel_id in viewers:
            owner = states.get(channel_id) or live.channels.get(channel_id)
            source = keys.channel_viewers(channel_id)
            if owner is not None and owner.campaign and source not in refused:
                merge_into.setdefault(owner.campaign, []).append(source)
        batch = _Batch(self.client)
        for campaign, sources in merge_into.items():
            target = keys.campaign(campaign, "viewers")
            for i in range(0, len(sources), MERGE_CHUNK):
                batch.on(target).pfmerge(target, target, *sources[i : i + MERGE_CHUNK])
        await self._run(batch)

        counted = list(states)
        for i in range(0, len(counted), PIPELINE_CHUNK):
            batch = _Batch(self.client)
            for channel_id in counted[i : i + PIPELINE_CHUNK]:
                key = keys.channel_viewers(channel_id)
                batch.on(key).pfcount(key)
            for channel_id, count in zip(counted[i : i + PIPELINE_CHUNK], await self._run(batch), strict=True):
                if isinstance(count, int):
                    live.unique_viewers[channel_id] = count
        batch = _Batch(self.client)
        for campaign in campaigns:
            key = keys.campaign(campaign, "viewers")
            batch.on(key).pfcount(key)
        for campaign, count in zip(campaigns, await self._run(batch), strict=True):
            if isinstance(count, int):
                live.campaign_unique_viewers[campaign] = count

        batch = _Batch(self.client)
        for campaign, channel_ids in campaigns.items():
            members, creators_key, gmv_key = (
                keys.campaign(campaign, "channels"),
                keys.campaign(campaign, "creators"),
                keys.campaign(campaign, "gmv"),
            )
            for i in range(0, len(channel_ids), PIPELINE_CHUNK):
                part = channel_ids[i : i + PIPELINE_CHUNK]
                batch.on(keys.campaigns()).sadd(keys.campaigns(), campaign)
                batch.on(members).sadd(members, *part)
                creators = {c for cid in part for c in states[cid].creators}
                if creators:
                    batch.on(creators_key).sadd(creators_key, *creators)
                batch.on(gmv_key).zadd(gmv_key, {cid: states[cid].totals.gmv_vnd for cid in part})
            if len(batch) >= PIPELINE_CHUNK:
                await self._run(batch)
                batch = _Batch(self.client)
        alerts_key, history_key = keys.active_alerts(), keys.alert_history()
        resolved: dict[str, AlertRecord] = {}
        resolved_times = live.resolved_at
        if len(resolved_times) > 10_000:  # resolutions of alerts this mirror never wrote: not needed
            resolved_times.clear()

        def resolved_at(record: AlertRecord) -> int:
            """The resolution's event time (the newest event time of its livestream if it is not known)."""
            return resolved_times.pop(record.alert_id, states[record.channel_id].max_ts_ms)

        written: dict[str, AlertRecord] = {}
        for channel_id, state in states.items():
            key = keys.channel(channel_id)
            fields = channel_hash(state, live.unique_viewers.get(channel_id, 0))
            self._hset_unless_newer(batch, key, fields, state.partition, state.last_offset, final=False)
            active = channel_alert_records(state)
            for rule in CHANNEL_RULES:
                field = alert_field(rule, channel_id)
                before = self._alerts_written.get(field)
                if field in active:
                    record = active[field]
                    batch.on(alerts_key).hset(alerts_key, field, msgspec.json.encode(record))
                    if before is not None and before.alert_id != record.alert_id:
                        batch.on(history_key).hset(
                            history_key, before.alert_id, history_entry(before, resolved_at(before), resolved=True)
                        )
                    batch.on(history_key).hset(history_key, record.alert_id, history_entry(record))
                    batch.on(history_key).expire(history_key, WINDOW_TTL_S)
                    written[field] = record
                else:
                    batch.on(alerts_key).hdel(alerts_key, field)
                    if before is not None:
                        batch.on(history_key).hset(
                            history_key, before.alert_id, history_entry(before, resolved_at(before), resolved=True)
                        )
                        batch.on(history_key).expire(history_key, WINDOW_TTL_S)
                        resolved[field] = before
            for start_ms, counters in windows_written.get(channel_id, {}).items():
                key = keys.window(channel_id, start_ms)
                fields = window_hash(counters, start_ms, self.window_size_ms, final=False)
                self._hset_unless_newer(batch, key, fields, state.partition, state.last_offset, final=False)
                batch.on(key).expire(key, WINDOW_TTL_S)
            if len(batch) >= PIPELINE_CHUNK:
                await self._run(batch)
                batch = _Batch(self.client)
        for window in closed:
            key = keys.window(window.channel_id, window.start_ms, window.size_ms)
            fields = window_hash(window.counters, window.start_ms, window.size_ms, final=True)
            self._hset_unless_newer(batch, key, fields, None, -1, final=True)
            batch.on(key).expire(key, WINDOW_TTL_S)
            if len(batch) >= PIPELINE_CHUNK:
                await self._run(batch)
                batch = _Batch(self.client)
        await self._run(batch)
        for field in resolved:
            self._alerts_written.pop(field, None)
        self._alerts_written.update(written)
        for channel_id, pending in windows_written.items():
            if live.pending_windows.get(channel_id) is pending:  # not replaced by a newer state meanwhile
                del live.pending_windows[channel_id]

    async def _write_history(self, transitions: list[AlertRecord]) -> None:
        """Every transition into the alert history, in order: a firing record as it is, a resolution as its
        alert's firing record marked resolved at the resolution's event time (the resolution record itself when
        the firing one is not known here). Written before the state, whose diff rewrites the same entries."""
        if not transitions:
            return
        keys, batch = self.keys, _Batch(self.client)
        history_key = keys.alert_history()
        firing = dict(self._firing_records)
        for record in transitions:
            if record.status == "firing":
                firing[record.alert_id] = record
                entry = history_entry(record)
            else:
                entry = history_entry(firing.pop(record.alert_id, record), record.at_ms, resolved=True)
            batch.on(history_key).hset(history_key, record.alert_id, entry)
            if len(batch) >= PIPELINE_CHUNK:
                await self._run(batch)
                batch = _Batch(self.client)
        batch.on(history_key).expire(history_key, WINDOW_TTL_S)
        await self._run(batch)
        # Kept only once written; alerts resolved while another worker owned them are not needed here.
        self._firing_records = firing if len(firing) <= REPORTED_KEYS_MAX else {}

    async def _refused_keys(self, batch: _Batch) -> set[str]:
        """Execute ``batch``; the keys of its commands that were refused."""
        results = await self._run(batch)
        return {key for key, result in zip(batch.keys, results, strict=True) if isinstance(result, Exception)}

    async def _write_campaign(self, windows: list[tuple[str, int, Counters, int]], alerts_changed: bool) -> None:
        keys, batch = self.keys, _Batch(self.client)
        for campaign, start_ms, counters, livestreams in windows:
            key = keys.campaign_window(campaign, start_ms)
            fields = window_hash(counters, start_ms, self.window_size_ms, final=True)
            fields["livestreams"] = livestreams
            batch.on(key).hset(key, mapping=fields)
            batch.on(key).expire(key, WINDOW_TTL_S)
            index = keys.campaign(campaign, "windows")
            batch.on(index).zadd(index, {str(start_ms): start_ms})
        written = self._campaigns_with_alerts
        if alerts_changed:
            active, alerts_key, history_key = self.live.campaign_alerts, keys.active_alerts(), keys.alert_history()
            written = {}
            for campaign in set(self._campaigns_with_alerts) | set(active):
                field = alert_field("gmv_milestone", campaign)
                record = active.get(campaign, {}).get("gmv_milestone")
                before = self._campaigns_with_alerts.get(campaign)
                if before is not None and (record is None or before.alert_id != record.alert_id):
                    batch.on(history_key).hset(history_key, before.alert_id, history_entry(before, resolved=True))
                if record is not None:
                    batch.on(alerts_key).hset(alerts_key, field, msgspec.json.encode(record))
                    batch.on(history_key).hset(history_key, record.alert_id, history_entry(record))
                    written[campaign] = record
                else:
                    batch.on(alerts_key).hdel(alerts_key, field)
                batch.on(history_key).expire(history_key, WINDOW_TTL_S)
        await self._run(batch)
        self._campaigns_with_alerts = written

    async def close(self) -> None:
        await self.client.aclose()


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> RedisMirror:
    mirror = RedisMirror(settings, live)

    @app.task
    async def mirror_to_redis() -> None:
        """Flush when a batch changed the snapshot; flushes start at least ``redis_flush_interval_s`` apart, so a
        busy worker writes Redis a few times a second and a quiet one right after each change."""
        interval = settings.redis_flush_interval_s
        while not app.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.changed.wait(), timeout=interval)
            live.changed.clear()
            started = time.monotonic()
            await mirror.flush()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    return mirror
