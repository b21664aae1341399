"""Kafka preparation before a worker joins its group: topics exist, and the group has a committed offset everywhere.

Why the offsets: when a faust app has tables, records fetched while the table is still recovering are discarded,
and afterwards faust seeks to the *committed* offsets. For a partition with no committed offset yet there is
nothing to seek to, so those records would be skipped silently (seen with faust-streaming 0.15.3 on a fresh
group). Committing the partition's beginning offset first makes the post-recovery seek land where it must.
Only partitions without any committed offset are touched, so restarts and extra workers change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import Settings

log = logging.getLogger(__name__)


class KafkaUnavailableError(RuntimeError):
    """No bootstrap server could be reached and authenticated with the settings' security options."""


async def check_kafka(settings: Settings, timeout_s: float = 15.0) -> None:
    """Open (and close) one authenticated connection to a bootstrap server, or raise :class:`KafkaUnavailableError`
    naming each server's cause: refused, TLS verification failed, SASL authentication failed, timed out.

    aiokafka's own clients only say "Unable to bootstrap" (the cause goes to a log line), and faust retries a
    failing broker for ever; this check turns wrong credentials into one clear error at startup.
    """
    from aiokafka.conn import create_conn

    options = settings.kafka_client_options()
    options.pop("bootstrap_servers")
    causes: list[str] = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **options), timeout_s
            )
        except TimeoutError:
            causes.append(f"{server}: no answer within {timeout_s:.0f} s")
            continue
        except Exception as exc:
            causes.append(f"{server}: {type(exc).__name__}: {exc}")
            continue
        conn.close()
        return
    who = (
        f", SASL {settings.kafka_sasl_mechanism} user {settings.kafka_sasl_username!r}"
        if (settings.kafka_security_protocol.startswith("SASL_"))
        else ""
    )
    raise KafkaUnavailableError(
        f"cannot connect to Kafka ({settings.kafka_security_protocol}{who}): " + "; ".join(causes)
    )


def changelog_topics(app: Any) -> list[NewTopic]:
    """The changelog topics of ``app``'s tables, as faust would create them (compacted, the table's configs).

    Created before the worker starts: faust creates them itself while starting, and a table written before the
    new topic's partitions appear in the client's metadata fails faust's partition check (``PartitionsMismatch``:
    the changelog "has 0 partitions"), seen on a freshly started broker.
    """
    topics = []
    for table in app.tables.values():
        changelog = table.changelog_topic
        configs = {"cleanup.policy": "compact", **{k: str(v) for k, v in (changelog.config or {}).items()}}
        partitions = changelog.partitions or app.conf.topic_partitions
        replicas = changelog.replicas or app.conf.topic_replication_factor
        topics.append(NewTopic(table.changelog_topic_name, partitions, replicas, topic_configs=configs))
    return topics


APPEND_TIME: dict[str, str] = {"message.timestamp.type": "LogAppendTime"}
"""The events topic's records carry the broker's append time: one clock for every record and every idle tick,
whatever the producers' clocks say or claim (idleness, silence and campaign progress are judged by it)."""
_DYNAMIC_TOPIC_CONFIG = 1
"""``config_source`` of a topic's own (non-default) setting in a DescribeConfigs v1+ answer."""


async def use_append_time(admin: AIOKafkaAdminClient, topic: str) -> bool:
    """Switch an existing ``topic`` to broker append time, keeping its other settings (AlterConfigs replaces a
    topic's whole set); returns whether it changed."""
    [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    error, message, _, _, entries = described.resources[0][:5]
    if error:
        raise RuntimeError(f"describing {topic}: error {error} {message}")
    own = {e[0]: e[1] for e in entries if e[3] == _DYNAMIC_TOPIC_CONFIG and e[1] is not None}
    if own.get("message.timestamp.type") == APPEND_TIME["message.timestamp.type"]:
        return False
    answers = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {**own, **APPEND_TIME})])
    for answer in answers:
        for error, message, *_ in answer.resources:
            if error:
                raise RuntimeError(f"altering {topic}: error {error} {message}")
    return True


async def ensure_topics(settings: Settings, extra: Sequence[NewTopic] = ()) -> None:
    """Create the pipeline's topics (and ``extra`` ones) that do not exist yet; an existing events topic is switched
    to broker append time (:data:`APPEND_TIME`; if that is not allowed, a warning says so)."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        wanted = [
            NewTopic(settings.events_topic, settings.partitions, 1, topic_configs=dict(APPEND_TIME)),
            NewTopic(settings.stats_1m_topic, settings.partitions, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(settings.stats_hop_topic, settings.partitions, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(settings.campaign_stats_topic, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(settings.campaign_input_topic, 1, 1),
            NewTopic(settings.alerts_topic, settings.partitions, 1),
            NewTopic(settings.dlq_topic, 1, 1),
            NewTopic(settings.late_topic, 1, 1),
            *extra,
        ]
        existing = set(await admin.list_topics())
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent worker created it
                await admin.create_topics(missing)
        if settings.events_topic in existing:
            try:
                if await use_append_time(admin, settings.events_topic):
                    log.info("%s now stamps records with the broker's append time", settings.events_topic)
            except Exception as exc:
                log.warning(
                    "%s keeps the producers' timestamps (%r): idleness and silence are then measured by the "
                    "producers' clocks",
                    settings.events_topic,
                    exc,
                )
    finally:
        await admin.close()


async def commit_initial_offsets(settings: Settings) -> dict[int, int]:
    """Commit the beginning offset for every events partition the group has never committed; returns those."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]
        tps.append(TopicPartition(settings.campaign_input_topic, 0))
        consumer.assign(tps)
        uncommitted = [tp for tp in tps if await consumer.committed(tp) is None]
        if not uncommitted:
            return {}
        beginnings = await consumer.beginning_offsets(uncommitted)
        await consumer.commit({tp: beginnings[tp] for tp in uncommitted})
        log.info("committed starting offsets for a new group: %s", beginnings)
        return {tp.partition: offset for tp, offset in beginnings.items() if tp.topic == settings.events_topic}
    finally:
        await consumer.stop()


async def events_partitions(settings: Settings) -> int | None:
    """The partition count of the events topic as Kafka has it (None if the topic does not exist yet)."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(settings.events_topic)
        return len(found) if found else None
    finally:
        await consumer.stop()


async def settings_for_topic(settings: Settings) -> Settings:
    """``settings`` with the partition count of an existing events topic: a livestream's home partition (murmur2
    of its key modulo the count), its tables and its outputs follow the topic, whatever ``LIVESTREAM_PARTITIONS``
    says (it only sizes a namespace's topics when they are created)."""
    await check_kafka(settings)
    count = await events_partitions(settings)
    if count is None or count == settings.partitions:
        return settings
    log.warning(
        "%s has %d partitions, LIVESTREAM_PARTITIONS is %d: using the topic's %d",
        settings.events_topic,
        count,
        settings.partitions,
        count,
    )
    return settings.model_copy(update={"partitions": count})


async def prepare_kafka(settings: Settings, extra_topics: Sequence[NewTopic] = ()) -> None:
    await check_kafka(settings)
    await ensure_topics(settings, extra_topics)
    try:
        await commit_initial_offsets(settings)
    except Exception as exc:
        log.info("initial offsets not committed (%r); the group is already running", exc)


def shorten_fetch_wait(app: Any, max_wait_ms: int) -> None:
    """Make the worker's Kafka consumer answer within ``max_wait_ms`` when a fetch finds no new record.

    faust-streaming 0.15.3 creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change
    it. A fetch request leaves out partitions that still have records buffered in the client, and waits up to that
    long for data on the rest; records arriving meanwhile on the left-out partitions wait for it too. Measured here:
    event-to-Redis latency p50 1.6 s with 1500 ms, 0.15 s with 100 ms. Call once the consumer exists (on
    partition assignment); aiokafka reads the value at every fetch.
    """
    consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
        fetcher._fetch_max_wait_ms = max_wait_ms
    else:
        log.warning("could not shorten the consumer's fetch wait (faust or aiokafka internals changed)")
