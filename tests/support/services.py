"""Run a platform service in-process against the test broker and database."""

from __future__ import annotations

from services.runtime.settings import Settings


def make_settings(
    kafka_bootstrap: str, database_url: str, prefix: str, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "database_url": database_url,
        "cm_topic_prefix": prefix,
        "kafka_session_timeout_ms": 2000,
        "kafka_heartbeat_interval_ms": 500,
        "relay_poll_interval_ms": 50,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
