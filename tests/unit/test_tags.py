"""Bracket tags (contracts/tags.py): the one filler of merchants' texts."""

from __future__ import annotations

import pytest

from contracts import tags

VALUES = {"InvoiceNumber": "INV-1", "OpenAmount": "[InvoiceNumber]"}


def test_known_tags_are_filled_in_one_pass_and_unknown_ones_stay() -> None:
    text = "[InvoiceNumber]: [OpenAmount] [Unknown] [Two Words] [[InvoiceNumber]]"

    filled = tags.fill(text, VALUES.get)

    # A value that looks like a tag is not expanded again.
    assert filled == "INV-1: [InvoiceNumber] [Unknown] [Two Words] [INV-1]"


def test_a_tag_has_no_brackets_or_line_breaks_and_at_most_80_characters() -> None:
    assert tags.names("[A] [B\nC] [" + "x" * 81 + "] [" + "y" * 80 + "] [D]") == {
        "A",
        "y" * 80,
        "D",
    }


def test_a_tag_matches_in_any_case_and_by_its_aliases() -> None:
    value_of = tags.lookup({"InvoiceNumber": "INV-1", "OpenAmount": "12.00"})

    filled = tags.fill("[invoicenumber] [INVOICENUMBER] [InvoiceAmountOpen] [Nope]", value_of)

    assert filled == "INV-1 INV-1 12.00 [Nope]"
    assert value_of("invoiceamountopen") == "12.00"
    # an alias only stands for a tag the table has
    assert tags.lookup({"InvoiceNumber": "INV-1"})("InvoiceAmountOpen") is None


def test_tags_that_differ_only_in_case_cannot_share_a_table() -> None:
    with pytest.raises(ValueError):
        tags.lookup({"OpenAmount": "1", "openamount": "2"})
