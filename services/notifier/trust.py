"""The notifier's trust boundaries, set up when it starts: which webhook targets are
allowed (netguard.py) and the key that encrypts webhook secrets at rest (secrets.py).

`WebhookTrust` is filled in from the settings by the service's first background task and
read by the RegisterWebhook handler and the webhook dispatcher. `python -m
services.notifier` refuses to start without a valid `CM_SECRET_KEY` (`check_settings`);
a notifier built in-process without one logs the reason, sends no webhooks and leaves
RegisterWebhook commands unanswered (redelivered) until it is restarted with a key.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.notifier.netguard import Resolver, TargetPolicy, system_resolve
from services.notifier.repository import NotifierRepository
from services.notifier.secrets import SecretBox, SecretKeyError, SecretUnreadable
from services.runtime.consumer import InfrastructureError
from services.runtime.logs import get_logger
from services.runtime.settings import Settings

log = get_logger(__name__)

#: Webhook rows read per round when re-encrypting at start.
RESEAL_BATCH = 500


def secret_box(settings: Settings) -> SecretBox:
    """The box of `CM_SECRET_KEY`, or `SecretKeyError` saying what is wrong with it."""
    value = settings.cm_secret_key.get_secret_value() if settings.cm_secret_key else None
    return SecretBox.from_setting(value)


def target_policy(settings: Settings, resolve: Resolver = system_resolve) -> TargetPolicy:
    return TargetPolicy(
        allow_private_networks=settings.webhook_allow_private_networks,
        dns_timeout_s=settings.webhook_dns_timeout_s,
        resolve=resolve,
    )


def check_settings(settings: Settings) -> None:
    """`SecretKeyError` when the notifier cannot run with these settings."""
    secret_box(settings)


@dataclass
class WebhookTrust:
    #: How webhook host names are resolved (tests put in names of their own).
    resolve: Resolver = system_resolve
    policy: TargetPolicy | None = None
    box: SecretBox | None = None
    problem: str | None = None

    def configure(self, settings: Settings) -> bool:
        """Fill in the policy and the key from `settings` (once); False, with the reason
        logged, when `CM_SECRET_KEY` is missing or invalid."""
        if self.box is not None:
            return True
        if self.problem is not None:
            return False
        try:
            box = secret_box(settings)
        except SecretKeyError as error:
            self.problem = str(error)
            log.error("the notifier cannot use webhooks: " + self.problem)
            return False
        self.policy = target_policy(settings, self.resolve)
        self.box = box
        return True

    def require(self) -> tuple[TargetPolicy, SecretBox]:
        """The policy and the key; `InfrastructureError` (the message is delivered again)
        until they are configured."""
        if self.policy is None or self.box is None:
            raise InfrastructureError(self.problem or "the notifier has not started yet")
        return self.policy, self.box


async def reseal_secrets(pool: asyncpg.Pool, box: SecretBox) -> tuple[int, int]:
    """Encrypt with the first key every stored secret that is not yet (plain text from an
    older version, or another key's token); returns (re-encrypted, unreadable). Each row
    is replaced only if it did not change meanwhile (a RegisterWebhook wins)."""
    resealed = unreadable = 0
    after = ""
    while True:
        async with pool.acquire() as conn:
            repo = NotifierRepository(conn)
            rows = await repo.webhook_secrets(after, RESEAL_BATCH)
            for website_key, stored in rows:
                try:
                    new = box.reseal(stored)
                except SecretUnreadable:
                    unreadable += 1
                    continue
                if new is not None and await repo.replace_secret(website_key, stored, new):
                    resealed += 1
        if len(rows) < RESEAL_BATCH:
            return resealed, unreadable
        after = rows[-1][0]
