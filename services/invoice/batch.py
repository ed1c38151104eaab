"""The invoice consumers' batch hooks: one `InvoiceBatch` per batch, filled up front.

`InvoiceBatchHooks.begin` takes the locks of the invoice numbers that the batch's
messages are about (their Kafka keys, per the catalog) and reads (and locks) those
invoices, their debtors and, for creations, their early transactions and schemes: one
query each for the whole batch, the repository's own queries asked for many keys at once.
Handlers then read from memory and keep their writes; `finish` writes every changed
invoice and debtor, logged event and early transaction in one statement each. A batch of
500 CreateInvoice costs about ten round trips instead of seven per invoice. A message
replayed on its own (services/runtime/consumer.py) is a batch of one: the same path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.envelope import Envelope
from contracts.invoice import CreateCombinedInvoice, CreateInvoice
from services.invoice.repository import InvoiceBatch
from services.runtime.consumer import aggregate_keys
from services.runtime.db import Connection

#: The payload fields that name the invoice a message is about, in its Kafka key.
INVOICE_KEY_FIELDS = frozenset({"invoice_number", "original_invoice_number"})


class InvoiceBatchHooks:
    """The invoice consumers' `BatchHooks` (services.runtime.consumer)."""

    async def begin(self, conn: Connection, envelopes: Sequence[Envelope[Any]]) -> InvoiceBatch:
        batch = InvoiceBatch()
        keys = aggregate_keys(envelopes, INVOICE_KEY_FIELDS)
        if not keys:
            return batch
        # The same locks a handler takes, all at once, before any row is read.
        await batch.lock(conn, keys)
        await batch.load_invoices(conn, keys)
        # Steps are planned in the merchant's time zone.
        await batch.load_merchants(conn, {site for site, _ in keys})
        creates = [
            (e.website_key, e.payload)
            for e in envelopes
            if isinstance(e.payload, CreateInvoice | CreateCombinedInvoice)
        ]
        if creates:
            await batch.load_parked(
                conn,
                [
                    key
                    for site, cmd in creates
                    if batch.invoices[key := (site, cmd.invoice_number)] is None
                ],
            )
            await batch.load_schemes(conn, [(site, cmd.scheme_key) for site, cmd in creates])
        # Every change emits the invoice's snapshot, with its debtor.
        await batch.load_debtors(
            conn,
            [(site, cmd.debtor.code) for site, cmd in creates]
            + [
                (site, invoice.debtor_code)
                for (site, _), invoice in batch.invoices.items()
                if invoice is not None and invoice.debtor_code is not None
            ],
        )
        return batch

    async def finish(self, conn: Connection, state: InvoiceBatch) -> None:
        await state.flush(conn)
