"""Run a platform service in-process against the test broker and database."""

from __future__ import annotations

from services.runtime.settings import Settings

#: The notifier's CM_SECRET_KEY in tests (a fixed Fernet key; never used outside tests).
TEST_SECRET_KEY = "Rj_7vZ5lsJap1xwy7vnl_V2JuVXdXLBwLPCs7FuFOKA="

#: Environment every service started as a process in tests gets (as `make run` sets it):
#: the notifier's key, and webhooks allowed to the loopback receivers of the tests.
SERVICE_ENV = {"CM_SECRET_KEY": TEST_SECRET_KEY, "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}


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
        "cm_secret_key": TEST_SECRET_KEY,
        "webhook_allow_private_networks": True,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
