"""Settings: one frozen object built once at the entry point from flags and ``LIVESTREAM_*`` environment variables.

Nothing else in the project reads the environment. Topic names and the Redis key prefix derive from
``namespace`` so that several pipelines (e.g. tests) can share one broker and one Redis without seeing each other.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration. Every field is settable as ``LIVESTREAM_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_", frozen=True, extra="ignore")

    # Where things are.
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (every Kafka client of the project)"
    )
    kafka_sasl_mechanism: str = Field("SCRAM-SHA-512", description="SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password_file: Path | None = Field(None, description="file holding the SASL password (never a flag)")
    kafka_ssl_cafile: Path | None = Field(None, description="CA certificate(s) that signed the brokers' certificates")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis serving layer")
    namespace: str = Field("livestream", description="prefix of topic names, the consumer group and Redis keys")
    data_dir: Path = Field(Path(".cache/worker"), description="worker state (RocksDB tables) root")
    web_port: int = Field(6066, description="worker HTTP port: /metrics, /api/*, the ops board")
    web_host: str = Field("127.0.0.1", description="address the worker's HTTP server (board, API, /metrics) binds")

    # Topology.
    partitions: int = Field(
        12, ge=1, description="partitions of the events topic and the state changelogs (fixed once a namespace exists)"
    )

    # Processing.
    batch_max_records: int = Field(20_000, ge=1, description="Kafka records taken per processing batch")
    batch_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="key and value bytes taken per processing batch (at least one record): bounds the events of a "
        "batch, so the event loop is never held for long",
    )
    batch_within_s: float = Field(
        0.05, gt=0, description="longest wait to fill a faust take_events batch (the pass-through benchmark)"
    )
    max_buffered_records: int = Field(
        50_000, ge=1, description="fetched events records waiting for processing before fetching pauses"
    )
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="bytes of fetched records waiting for processing before fetching pauses"
    )
    commit_interval_s: float = Field(1.0, gt=0, description="how often processed offsets are committed")
    standby_replicas: int = Field(
        1, ge=0, description="standby copies of each state partition on other workers (fast takeover)"
    )
    stall_after_s: float = Field(
        60.0, gt=0, description="an owned partition with lag and no progress for this long is stalled (not ready)"
    )
    max_clock_lead_s: int = Field(
        5,
        ge=0,
        description="a record moves its partition's event-time clock and its livestream's watermark at most this far "
        "past its Kafka timestamp (at most window_grace_s: a larger lead closes windows before events on time arrive)",
    )
    producer_batch_bytes: int = Field(
        1_048_576, ge=1024, description="largest batch the worker's producer builds per partition (bytes)"
    )
    consumer_fetch_wait_ms: int = Field(
        100, ge=1, description="longest a Kafka fetch waits for new records (faust hard-codes 1500 ms)"
    )
    redis_flush_interval_s: float = Field(
        0.05, gt=0, description="least time between two Redis flushes (a flush follows each processed batch)"
    )
    window_size_s: int = Field(60, ge=1, description="tumbling window length")
    window_grace_s: int = Field(10, ge=0, description="a window accepts events until watermark >= end + grace")
    allowed_lateness_s: int = Field(0, ge=0, description="watermark = max event time seen - allowed lateness")
    hop_windows: int = Field(5, ge=1, description="hopping window = this many tumbling windows, advancing by one")
    dedup_horizon_s: int = Field(600, ge=0, description="a repeated event_id within this much event time counts once")
    order_horizon_s: int = Field(
        86_400, ge=0, description="a repeated status of one order id within this much event time counts once"
    )
    idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="after this long without records a stream's watermark "
        "advances by wall clock, closing its last windows",
    )
    idle_tick_s: float = Field(5.0, gt=0, description="how often each owned partition gets an idle-check tick")
    max_future_s: int = Field(3600, ge=0, description="events further ahead of wall clock are dead letters")
    max_past_days: int = Field(3650, ge=0, description="events older than this are dead letters")

    # State stores (one RocksDB per table partition).
    rocksdb_write_buffer_mb: int = Field(
        1, ge=1, description="RocksDB memtable size per table partition (faust's default is 64 MB)"
    )
    rocksdb_block_cache_mb: int = Field(
        1, ge=1, description="RocksDB block cache per table partition (faust's default is 2 GB)"
    )

    changelog_segment_mb: int = Field(
        16, ge=1, description="segment size of the state changelog topics (compaction works on closed segments)"
    )

    # Alerts.
    alert_rules: Path | None = Field(
        None, description="TOML file of alert rule thresholds (default: built-in, as in deploy/alerts.toml)"
    )

    # Metrics.
    top_k_channels: int = Field(20, ge=0, description="per-livestream Prometheus series for the top K by GMV")

    # Serving (query API /api/v1, board, `livestream status`).
    vnd_per_usd: float = Field(
        23_392.0, gt=0, description="exchange rate for the USD figures of the API and the board (VND per USD)"
    )
    silent_after_s: float = Field(
        60.0,
        gt=0,
        description="a livestream that has not ended is silent (not watching) after this long without events: "
        "behind its campaign's newest event time, or without a Redis update by wall clock",
    )

    # Ingestion gateway (livestream gateway).
    gateway_host: str = Field("127.0.0.1", description="gateway listen address (0.0.0.0 to expose it)")
    gateway_port: int = Field(8080, description="gateway HTTP port: POST /v1/events, /healthz, /readyz, /metrics")
    gateway_tokens_file: Path | None = Field(
        None, description="TOML file of the gateway's sources: token SHA-256, campaigns, channel prefixes"
    )
    gateway_tokens: str | None = Field(
        None, description="more gateway sources, as TOML text in the same format as the tokens file"
    )
    gateway_max_body_bytes: int = Field(8 * 1024 * 1024, ge=1, description="request body as sent (413 above)")
    gateway_max_decompressed_bytes: int = Field(
        32 * 1024 * 1024, ge=1, description="request body after gzip decompression (413 above)"
    )
    gateway_max_events: int = Field(10_000, ge=1, description="events per request (413 above)")
    gateway_max_event_bytes: int = Field(64 * 1024, ge=1, le=256 * 1024, description="bytes of one event")
    gateway_rate_eps: float = Field(200_000, gt=0, description="default events/s per source (429 above)")
    gateway_rate_burst: float = Field(400_000, gt=0, description="default burst of events per source")
    gateway_linger_ms: float = Field(
        5.0, ge=0, le=20, description="how long events wait for others of their livestream to share an envelope"
    )
    gateway_envelope_max_events: int = Field(5_000, ge=1, le=10_000, description="events per envelope")
    gateway_envelope_max_bytes: int = Field(
        512 * 1024, ge=300 * 1024, le=1_000_000, description="bytes per envelope record (under Kafka's 1 MB default)"
    )
    gateway_max_in_flight_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="accepted event bytes not yet acknowledged by Kafka (503 above)"
    )
    gateway_max_reading_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="memory for request bodies being read and validated, all requests together (503 above)",
    )
    gateway_produce_timeout_s: float = Field(
        10.0, gt=0, description="longest wait for Kafka to acknowledge a request's events (503 after)"
    )

    log_level: str = Field("info", description="log level: debug, info, warning or error")

    @model_validator(mode="after")
    def _lead_within_grace(self) -> Settings:
        if self.max_clock_lead_s > self.window_grace_s:
            raise ValueError(
                f"max_clock_lead_s ({self.max_clock_lead_s}) must not exceed window_grace_s ({self.window_grace_s}): "
                "an event stamped that far ahead would close its window before the events on time arrive"
            )
        return self

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (producer, consumer, admin): bootstrap and security.

        The SASL password is read from ``kafka_sasl_password_file`` here, so it is never part of the settings'
        printed form or the process arguments.
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            cafile = str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            options["ssl_context"] = ssl.create_default_context(cafile=cafile)  # verifies the broker and its name
        if self.kafka_security_protocol.startswith("SASL_"):
            password = self.kafka_sasl_password_file.read_text().strip() if self.kafka_sasl_password_file else ""
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=password,
            )
        return options

    @property
    def events_topic(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dlq_topic(self) -> str:
        return f"{self.namespace}.dlq"

    @property
    def late_topic(self) -> str:
        return f"{self.namespace}.late"

    @property
    def stats_1m_topic(self) -> str:
        return f"{self.namespace}.stats.1m"

    @property
    def stats_hop_topic(self) -> str:
        return f"{self.namespace}.stats.{self.window_size_s * self.hop_windows // 60}m"

    @property
    def alerts_topic(self) -> str:
        return f"{self.namespace}.alerts"

    @property
    def campaign_input_topic(self) -> str:
        return f"{self.namespace}.campaign-input"

    @property
    def campaign_stats_topic(self) -> str:
        return f"{self.namespace}.campaign-stats.1m"

    @property
    def app_id(self) -> str:
        return f"{self.namespace}-worker"

    @property
    def redis_prefix(self) -> str:
        return f"{self.namespace}:"
