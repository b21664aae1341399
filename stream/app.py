"""The faust application factory: one app per worker process, configured from :class:`Settings`.

Choices that matter (see ANCHORS in the docs):
- state lives in RocksDB-backed tables (``rocksdb://``, via rocksdict) with changelog topics in Kafka;
- no faust windowed tables: their expiry is wall-clock based and lost on restart; windows are our own state;
- offsets are committed only after the producer (changelog, stats, dead letters) has been flushed, which faust
  does in ``Consumer.commit``; records are acknowledged only after their batch's state has been written.
"""

from __future__ import annotations

import faust

from stream.settings import Settings


def create_app(settings: Settings) -> faust.App:
    brokers = ";".join(f"kafka://{host}" for host in settings.kafka_bootstrap.split(","))
    return faust.App(
        settings.app_id,
        broker=brokers,
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
        producer_max_batch_size=1_048_576,
        producer_max_request_size=8_388_608,  # dead letters carry the original record, up to MAX_RECORD_BYTES + slack
        producer_compression_type="lz4",
        consumer_max_fetch_size=8 * 1024 * 1024,
        table_cleanup_interval=3600.0,
        table_standby_replicas=settings.standby_replicas,
        logging_config=None,
    )
