"""Passwords (argon2id, argon2-cffi), sessions and CSRF tokens.

A session cookie carries 32 random bytes; the database keeps only their SHA-256, so a
leaked table opens no session. Each session has its own CSRF token, which every form
carries in a hidden field and every API write in the `X-CSRF-Token` header. The sign-in
form, before any session, uses a double-submit token: a random cookie that the form
must repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: argon2-cffi's defaults (RFC 9106's second recommendation: argon2id, 64 MiB, t=3).
_HASHER = PasswordHasher()
#: A hash to verify against when the username is unknown, so that a wrong username takes
#: as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))

SESSION_COOKIE = "cm_console_session"
LOGIN_CSRF_COOKIE = "cm_console_login"
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _HASHER.check_needs_rehash(password_hash)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
