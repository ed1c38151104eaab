"""Bracket tags in merchants' texts (`[InvoiceNumber]`, `[OpenAmount]`): one syntax and
one filler for every service that fills them in (pure).

The notifier fills its message templates with them (services/notifier/templates.py), the
invoice service a custom event's message (docs/invoices.md, CreateCustomEvent). Filling in
is a lookup per tag and one regex pass over the text: a merchant's text never runs code,
and a value that itself looks like a tag is not expanded again.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: A tag: `[Name]`, the name without brackets or line breaks, at most 80 characters.
TAG = re.compile(r"\[([^\[\]\r\n]{1,80})\]")


def fill(text: str, value_of: Callable[[str], str | None]) -> str:
    """`text` with every tag `value_of` knows replaced in one pass; a tag it does not know
    (None) stays as written."""

    def replace(match: re.Match[str]) -> str:
        value = value_of(match.group(1))
        return match.group(0) if value is None else value

    return TAG.sub(replace, text)


def names(text: str) -> set[str]:
    """The names of the tags `text` uses."""
    return {match.group(1) for match in TAG.finditer(text)}
