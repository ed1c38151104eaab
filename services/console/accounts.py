"""Console accounts, created by an operator (`cm console add-user`) or by `make run` for
its demo login. Runs the console's migrations first, so it works before the console has
ever started."""

from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError

from contracts.envelope import WEBSITE_KEY_RE
from services.console import auth, repository
from services.console.app import NAME, definition
from services.runtime.db import create_pool, migrate


class AccountError(ValueError):
    pass


def check_account(username: str, website_key: str, culture: str, time_zone: str) -> None:
    if not 1 <= len(username) <= 200 or username != username.strip():
        raise AccountError("a username has 1 to 200 characters, no leading or trailing space")
    if not WEBSITE_KEY_RE.fullmatch(website_key):
        raise AccountError(f"not a website key: {website_key!r}")
    try:
        Locale.parse(culture, sep="-")
    except (UnknownLocaleError, ValueError) as err:
        raise AccountError(f"unknown culture {culture!r} (e.g. nl-NL, en-GB)") from err
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise AccountError(f"unknown time zone {time_zone!r} (e.g. Europe/Amsterdam)") from err


async def add_user(
    dsn: str,
    username: str,
    website_key: str,
    password: str,
    *,
    culture: str = "nl-NL",
    time_zone: str = "Europe/Amsterdam",
    replace_password: bool = False,
    schema: str | None = None,
) -> bool:
    """Create the account (True), or find the username taken (False; with
    `replace_password`, its password is set to this one if it is the same merchant's)."""
    check_account(username, website_key, culture, time_zone)
    try:
        password_hash = await asyncio.to_thread(auth.hash_password, password)
    except ValueError as err:
        raise AccountError(str(err)) from err
    schema = schema or definition().schema_name
    pool = await create_pool(dsn, schema, min_size=1, max_size=1)
    try:
        await migrate(pool, schema, definition().migrations)
        async with pool.acquire() as conn:
            created = await repository.create_user(
                conn, username, website_key, password_hash, culture, time_zone
            )
            if created or not replace_password:
                return created
            found = await repository.user_with_hash(conn, username)
            if found is None or found[0].website_key != website_key:
                raise AccountError(f"{username!r} is an account of another merchant")
            await repository.set_password(conn, username, password_hash)
            return False
    finally:
        await pool.close()


__all__ = ["NAME", "AccountError", "add_user", "check_account"]
