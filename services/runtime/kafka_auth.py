"""How every Kafka client of the platform authenticates, from `Settings` (one place).

`broker_security(settings)` is what faststream's `KafkaBroker(security=...)` takes;
`client_options(settings)` the same as keyword arguments of aiokafka's producer,
consumer and admin clients:

    AIOKafkaProducer(bootstrap_servers=..., **client_options(settings))

PLAINTEXT (the default, the embedded broker) adds nothing. SASL_PLAINTEXT and SASL_SSL
need `KAFKA_SASL_USERNAME` and `KAFKA_SASL_PASSWORD`; SSL and SASL_SSL verify the
brokers' certificates against `KAFKA_SSL_CAFILE` (default: the system's CAs).
"""

from __future__ import annotations

import ssl
from typing import Any

from faststream.kafka.security import parse_security
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from services.runtime.settings import Settings

_SASL: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


class KafkaAuthError(ValueError):
    """The Kafka security settings do not fit together (e.g. SASL without a password)."""


def broker_security(settings: Settings) -> BaseSecurity | None:
    """faststream's security object for the configured protocol (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username
    password = settings.kafka_sasl_password
    if not username or password is None or not password.get_secret_value():
        raise KafkaAuthError(
            f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        )
    sasl = _SASL[settings.kafka_sasl_mechanism]
    return sasl(
        username,
        password.get_secret_value(),
        ssl_context=context,
        use_ssl=protocol == "SASL_SSL",
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments (security_protocol, sasl_*, ssl_context); {} for PLAINTEXT."""
    options: dict[str, Any] = parse_security(broker_security(settings))
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    # Verifies the broker's certificate and host name, like every Kafka client by default.
    return ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
