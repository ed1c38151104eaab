"""Webhook signing secrets encrypted at rest (Fernet, from the `cryptography` package).

`CM_SECRET_KEY` holds one or more Fernet keys, comma-separated: the first encrypts, every
one decrypts (MultiFernet). A stored secret is `fernet:` + a Fernet token; a value
without that prefix is a plain-text secret from before encryption, still used as it is
and encrypted when the notifier starts (`reseal`).

Rotation: put the new key first and keep the old one after it
(`CM_SECRET_KEY=new,old`), restart every notifier (each start re-encrypts what the first
key cannot read), then drop the old key. A token no key can read is never guessed at:
its deliveries fail with `secret_unreadable` until the merchant registers again (or the
old key is put back).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

#: The prefix of an encrypted stored secret.
PREFIX = "fernet:"
#: Most opened secrets a `SecretBox` keeps (one per merchant with deliveries going out).
_OPENED_MAX = 4096

GENERATE_HINT = (
    "make one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


class SecretKeyError(ValueError):
    """`CM_SECRET_KEY` is missing or not a list of Fernet keys (never shows a key)."""


class SecretUnreadable(Exception):
    """A stored secret that none of the keys decrypts."""

    code = "secret_unreadable"


class SecretBox:
    """Encrypts webhook secrets with the first key; decrypts with any of them."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretKeyError(f"CM_SECRET_KEY is not set; {GENERATE_HINT}")
        fernets = []
        for number, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except Exception:  # ValueError or binascii.Error: the key is not repeated
                raise SecretKeyError(
                    f"CM_SECRET_KEY: key {number} of {len(keys)} is not a Fernet key (32 "
                    f"url-safe base64-encoded bytes); {GENERATE_HINT}"
                ) from None
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)
        #: Stored form → secret, of what `open` read (the keys never change for a box).
        self._opened: dict[str, str] = {}

    @classmethod
    def from_setting(cls, value: str | None) -> SecretBox:
        """The box of `CM_SECRET_KEY`'s value: keys separated by commas (spaces ignored)."""
        return cls([key.strip() for key in (value or "").split(",") if key.strip()])

    def seal(self, secret: str) -> str:
        """The stored form of `secret`: encrypted with the first key."""
        return PREFIX + self._primary.encrypt(secret.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        """The secret of a stored value (a plain-text one from an older version as it is),
        or `SecretUnreadable`."""
        if not stored.startswith(PREFIX):
            return stored
        opened = self._opened.get(stored)
        if opened is not None:  # a merchant's deliveries share one stored secret
            return opened
        try:
            opened = self._all.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise SecretUnreadable(SecretUnreadable.code) from None
        if len(self._opened) >= _OPENED_MAX:
            self._opened.clear()
        self._opened[stored] = opened
        return opened

    def reseal(self, stored: str) -> str | None:
        """The stored value again, encrypted with the first key, when it is not yet (plain
        text, or another key's token); None when it already is. `SecretUnreadable` when no
        key reads it."""
        if not stored.startswith(PREFIX):
            return self.seal(stored)
        token = stored.removeprefix(PREFIX).encode()
        try:
            self._primary.decrypt(token)
            return None
        except InvalidToken:
            pass
        try:
            return PREFIX + self._all.rotate(token).decode("ascii")
        except InvalidToken:
            raise SecretUnreadable(SecretUnreadable.code) from None
