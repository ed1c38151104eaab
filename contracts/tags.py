"""Bracket tags in merchants' texts (`[InvoiceNumber]`, `[OpenAmount]`): one syntax and
one filler for every service that fills them in (pure).

The notifier fills its message templates with them (services/notifier/templates.py), the
invoice service a custom event's message (docs/invoices.md, CreateCustomEvent). Filling in
is a lookup per tag and one regex pass over the text: a merchant's text never runs code,
and a value that itself looks like a tag is not expanded again.

A tag's name matches in any case (`[invoicenumber]` is `[InvoiceNumber]`), and the other
spellings Buckaroo's documents use in their examples are aliases (`ALIASES`): `lookup`
is the one way a tag's name is looked up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

V = TypeVar("V")

#: A tag: `[Name]`, the name without brackets or line breaks, at most 80 characters.
TAG = re.compile(r"\[([^\[\]\r\n]{1,80})\]")


#: Other spellings of a tag, as Buckaroo's documents write them: alias → the tag it is.
ALIASES: dict[str, str] = {"InvoiceAmountOpen": "OpenAmount"}


def lookup(table: Mapping[str, V]) -> Callable[[str], V | None]:
    """The entry of `table` a tag's name stands for, in any case or as an alias; None when
    it stands for none."""
    folded = {name.casefold(): value for name, value in table.items()}
    if len(folded) != len(table):
        raise ValueError("two tags differ only in case")
    aliases = {
        alias.casefold(): folded[name.casefold()]
        for alias, name in ALIASES.items()
        if name.casefold() in folded and alias.casefold() not in folded
    }

    def value_of(name: str) -> V | None:
        key = name.casefold()
        return folded[key] if key in folded else aliases.get(key)

    return value_of


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
