"""Webhook secrets at rest: Fernet with CM_SECRET_KEY, rotation, plain-text rows of older
versions, and a notifier that refuses to start without a valid key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from services.notifier.secrets import PREFIX, SecretBox, SecretKeyError, SecretUnreadable
from services.notifier.trust import check_settings
from services.runtime.settings import Settings
from tests.support.notifier import new_secret

ROOT = Path(__file__).resolve().parents[2]


def key() -> str:
    return Fernet.generate_key().decode()


def test_a_sealed_secret_does_not_contain_the_secret_and_opens_again() -> None:
    box = SecretBox([key()])
    secret = new_secret()
    stored = box.seal(secret)
    assert stored.startswith(PREFIX)
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert box.open(stored) == secret
    assert box.seal(secret) != stored  # a fresh token (IV, time) each time


def test_a_plain_text_secret_of_an_older_version_is_used_as_it_is_and_resealed() -> None:
    box = SecretBox([key()])
    secret = new_secret()
    assert box.open(secret) == secret
    resealed = box.reseal(secret)
    assert resealed is not None and resealed.startswith(PREFIX)
    assert box.open(resealed) == secret


def test_rotation_new_key_first_old_key_still_reads_then_dropped() -> None:
    old, new = key(), key()
    secret = new_secret()
    stored = SecretBox([old]).seal(secret)

    both = SecretBox.from_setting(f"{new}, {old}")  # step 1: the new key first
    assert both.open(stored) == secret
    resealed = both.reseal(stored)  # step 2: re-encrypted (the notifier does it on start)
    assert resealed is not None and both.reseal(resealed) is None  # already the new key's

    only_new = SecretBox.from_setting(new)  # step 3: the old key dropped
    assert only_new.open(resealed) == secret
    with pytest.raises(SecretUnreadable):
        only_new.open(stored)  # what was not re-encrypted is lost with the old key
    with pytest.raises(SecretUnreadable):
        only_new.reseal(stored)


@pytest.mark.parametrize("value", [None, "", " , "])
def test_a_missing_key_is_refused(value: str | None) -> None:
    with pytest.raises(SecretKeyError, match="CM_SECRET_KEY is not set"):
        SecretBox.from_setting(value)


def test_an_invalid_key_is_refused_without_showing_it() -> None:
    good, bad = key(), "not-a-fernet-key-but-a-secret-value"
    with pytest.raises(SecretKeyError) as refused:
        SecretBox.from_setting(f"{good},{bad}")
    message = str(refused.value)
    assert "key 2 of 2 is not a Fernet key" in message
    assert bad not in message and good not in message


def test_check_settings_names_the_problem() -> None:
    check_settings(Settings(cm_secret_key=key()))  # type: ignore[arg-type]
    with pytest.raises(SecretKeyError):
        check_settings(Settings(cm_secret_key=None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "CM_SECRET_KEY is not set"), ("short", "key 1 of 1 is not a Fernet key")],
)
def test_the_notifier_process_refuses_to_start_without_a_valid_key(
    value: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CM_SECRET_KEY"}
    if value is not None:
        env["CM_SECRET_KEY"] = value
    # Nothing to connect to: the check comes before the broker or database is touched.
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.notifier"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "refusing to start" in done.stderr and expected in done.stderr
    if value is not None:
        assert value not in done.stderr.replace("CM_SECRET_KEY", "")


def test_an_opened_secret_is_kept_and_an_unreadable_one_fails_every_time() -> None:
    box = SecretBox([key()])
    secret = new_secret()
    stored = box.seal(secret)
    assert box.open(stored) == secret
    assert box.open(stored) == secret  # the second time from what the box kept
    foreign = SecretBox([key()]).seal(secret)
    for _ in range(2):
        with pytest.raises(SecretUnreadable):
            box.open(foreign)
