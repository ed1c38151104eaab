"""The one settings class of every service, read from the environment only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Default HTTP port (health and metrics) per service.
DEFAULT_HTTP_PORTS = {
    "invoice": 8081,
    "scheduler": 8082,
    "notifier": 8083,
    "subscription": 8084,
    "collection": 8085,
    "console": 8086,
}


class Settings(BaseSettings):
    """Environment variables, by their fixed names (docs/architecture.md, "Running")."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres", description="PostgreSQL DSN."
    )
    cm_clock: Literal["system", "manual"] = Field("system", description="Scheduler clock.")
    cm_topic_prefix: str = Field("", description="Prefix in front of every topic name.")
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    http_port: int | None = Field(None, description="Health and metrics port; per-service default.")
    http_host: str = "0.0.0.0"

    # Kafka tuning. Tansu answers a waiting fetch only at fetch_max_wait_ms, so keep it small.
    kafka_fetch_max_wait_ms: int = 20
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_interval_ms: int = 3_000
    kafka_max_records: int = 500
    #: Bytes a consumer fetches ahead per partition (aiokafka's `max_partition_fetch_bytes`,
    #: default 1 MiB). Each assigned partition with a backlog holds one fetch in memory,
    #: decoded: at 1 MiB a backlogged 8-partition consumer held ~45 MB, at 256 KiB ~18 MB
    #: (issue 14, bench/README.md). A record larger than this still comes, alone.
    kafka_max_partition_fetch_bytes: int = 262_144
    kafka_topic_partitions: int = 8
    kafka_replication_factor: int = 1
    #: `min.insync.replicas` of the topics a service creates (unset: the broker's
    #: default). With replication factor 3, 2: with `acks=all` a write needs two copies.
    kafka_min_insync_replicas: int | None = None
    kafka_linger_ms: int = 2
    #: The largest record the platform writes or reads (value + key + headers), the same
    #: as the broker's `message.max.bytes` (deploy/compose.yaml sets both). A consumed
    #: body above it is dead-lettered unparsed; an effect above it is refused when enqueued.
    kafka_max_message_bytes: int = 1_048_576

    # Kafka authentication (services/runtime/kafka_auth.py, docs/deploy.md). The default,
    # PLAINTEXT without credentials, is the embedded broker's (`make run`, the tests);
    # deploy/compose.yaml uses SASL_PLAINTEXT + SCRAM-SHA-512 with one user per service.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How to reach the brokers."
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = Field(None, description="SASL user (e.g. cm-invoice).")
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle for SSL/SASL_SSL (default: the system's CAs)."
    )

    db_pool_min_size: int = 2
    db_pool_max_size: int = 10

    # Outbox relay.
    relay_enabled: bool = Field(True, description="Run the outbox relay in this process.")
    relay_shards: int = Field(8, description="Key-hash shards; must match across replicas.")
    relay_batch_size: int = 1000
    relay_poll_interval_ms: int = 100

    # Scheduler: how often the system clock looks for due timers; timers per firing batch.
    scheduler_poll_interval_ms: int = 200
    scheduler_batch_size: int = 1000

    # Deduplication window: inbox ids and stored answers older than this are deleted.
    inbox_retention_days: float = 7.0
    inbox_prune_interval_s: float = 3600.0

    # How often the backlog gauges (outbox, parked rows, consumer lag, due timers) are
    # read (services/runtime/metrics.py); 0 turns the sampling off.
    metrics_sample_interval_s: float = 15.0

    # Redelivery back-off after an infrastructure failure.
    retry_backoff_ms: int = 500
    # A handler that raises an unexpected error: tries per message (with a doubling
    # back-off from `handler_retry_backoff_ms`) before that message alone is dead-lettered.
    handler_retry_attempts: int = 3
    handler_retry_backoff_ms: int = 100
    # How much of a bad body a dead letter carries (plus its length and SHA-256); a body
    # cut to it cannot be replayed (`cm dlq replay` refuses it).
    dlq_max_value_bytes: int = 16_384
    # Dead letters stay in the service's `dead_letters` table (for `cm dlq`) this long.
    dlq_retention_days: float = 30.0

    # Liveness: `/healthz` answers 503 once the database, the broker, a consumer or a
    # background worker has been failing for longer than this (services/runtime/health.py).
    health_failing_threshold_s: float = 60.0

    # Notifier (used from the notifier issue on).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "noreply@example.invalid"
    sms_provider_url: str | None = None
    letter_spool_dir: str | None = None
    print_provider_url: str | None = None
    webhook_timeout_s: float = 10.0
    # Notifier bounds (services/notifier/limits.py says what each one bounds).
    webhook_max_in_flight: int = 128
    webhook_max_in_flight_per_merchant: int = 4
    webhook_lease_s: float = 60.0
    notifier_response_max_bytes: int = 65_536
    message_send_timeout_s: float = 30.0
    message_max_in_flight: int = 16
    message_max_in_flight_per_provider: int = 8
    message_lease_s: float = 300.0
    # Notifier trust boundaries (docs/notifier.md).
    webhook_allow_private_networks: bool = Field(
        False,
        description="Allow webhooks over http and to loopback/private addresses (local runs).",
    )
    webhook_dns_timeout_s: float = Field(
        1.0, description="How long RegisterWebhook waits for the name's addresses."
    )
    cm_secret_key: SecretStr | None = Field(
        None,
        description="Fernet keys (comma-separated, the first encrypts) for webhook secrets.",
    )
    notifier_retention_days: float = Field(
        30.0, description="Days a sent or given-up push or message keeps its personal data."
    )
    notifier_prune_interval_s: float = 3600.0

    def topic_configs(self) -> dict[str, str]:
        """The settings of a topic the platform creates, beyond partitions and replicas."""
        if self.kafka_min_insync_replicas is None:
            return {}
        return {"min.insync.replicas": str(self.kafka_min_insync_replicas)}

    def port_for(self, service: str) -> int:
        return (
            self.http_port if self.http_port is not None else DEFAULT_HTTP_PORTS.get(service, 8080)
        )
