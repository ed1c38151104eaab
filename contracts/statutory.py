"""The Dutch statutory scale of collection costs (art. 6:96 BW, Besluit vergoeding voor
buitengerechtelijke incassokosten), one pure function for the whole platform.

The invoice service charges these costs (an `AdminCostIncrease` step with `statutory`);
the notifier states them in the 14-day letter. Both call `statutory_costs`, so the letter
names exactly what the step will charge (docs/dunning.md, "Dutch statutory costs").

The scale is in euros (its 40 minimum is €40): a step charges it on EUR invoices only
(`applies_to`) and skips it on others, and the letter then states 0.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from contracts.fields import minor_unit

#: (band width, rate): 15% of the first 2,500, 10% of the next 2,500, 5% of the next
#: 5,000, 1% of the next 190,000, 0.5% above.
STATUTORY_BANDS: tuple[tuple[Decimal | None, Decimal], ...] = (
    (Decimal(2500), Decimal("0.15")),
    (Decimal(2500), Decimal("0.10")),
    (Decimal(5000), Decimal("0.05")),
    (Decimal(190000), Decimal("0.01")),
    (None, Decimal("0.005")),
)
#: The currency the scale is written in: it applies to invoices in this currency only.
STATUTORY_CURRENCY = "EUR"
STATUTORY_MINIMUM = Decimal(40)
STATUTORY_MAXIMUM = Decimal(6775)


def statutory_costs(principal: Decimal, currency: str) -> Decimal:
    """The scale on `principal` (a negative principal counts as 0): at least 40, at most
    6,775, rounded half-even to the currency's minor unit."""
    remaining = max(Decimal(0), principal)
    total = Decimal(0)
    for width, rate in STATUTORY_BANDS:
        part = remaining if width is None else min(remaining, width)
        total += part * rate
        remaining -= part
    total = min(max(total, STATUTORY_MINIMUM), STATUTORY_MAXIMUM)
    return total.quantize(Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_EVEN)


def applies_to(currency: str) -> bool:
    """Whether a statutory cost step charges the scale on an invoice in `currency`."""
    return currency == STATUTORY_CURRENCY
