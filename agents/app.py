"""The faust application factory: one app per worker process, configured from :class:`Settings`.

Choices that matter (see ANCHORS in the docs):
- state lives in RocksDB-backed tables (``rocksdb://``, via rocksdict) with changelog topics in Kafka;
- no faust windowed tables: their expiry is wall-clock based and lost on restart; windows are our own state;
- offsets are committed only after the producer (changelog, stats, dead letters) has been flushed, which faust
  does in ``Consumer.commit``; records are acknowledged only after their batch's state has been written.
"""

from __future__ import annotations

from typing import Any

import faust

from stream.settings import Settings


def broker_credentials(settings: Settings) -> Any:
    """faust's form of the Kafka security settings (``None`` for PLAINTEXT): the same options as every other client.

    faust hands these to each aiokafka client it creates (consumer, producer, topic creation)."""
    options = settings.kafka_client_options()
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            ssl_context=options.get("ssl_context"),
            mechanism=options["sasl_mechanism"],
        )
    raise ValueError(f"unsupported kafka_security_protocol {protocol!r}")


def create_app(settings: Settings) -> faust.App:
    brokers = ";".join(f"kafka://{host}" for host in settings.kafka_bootstrap.split(","))
    return faust.App(
        settings.app_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings),
        broker_client_id=settings.app_id,  # one client id per namespace: broker quotas and logs name the app
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10_000,
        broker_session_timeout=10.0,  # a killed worker's partitions move after 10 s, not faust's default 60 s
        broker_heartbeat_interval=2.0,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=20_000,
        stream_wait_empty=False,
        producer_linger_ms=5,
        producer_max_batch_size=settings.producer_batch_bytes,
        producer_max_request_size=8_388_608,  # dead letters carry the original record, up to MAX_RECORD_BYTES + slack
        producer_compression_type="lz4",
        consumer_max_fetch_size=8 * 1024 * 1024,
        table_cleanup_interval=3600.0,
        table_standby_replicas=settings.standby_replicas,
        logging_config=None,
    )
