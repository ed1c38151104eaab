"""The console's costs report (services/console/reports.py; docs/console.md "Costs"):
the sums per IncreasedAdminFee `Reason` merged into the kinds, and the CSV."""

from __future__ import annotations

from decimal import Decimal as D

from services.console import reports


def test_reasons_name_the_kinds_by_the_invoice_services_constants() -> None:
    assert reports.cost_kind(None) == "admin"
    assert reports.cost_kind("statutory_costs") == "statutory"
    assert reports.cost_kind("statutory_costs_only_in_eur") == "statutory"
    assert reports.cost_kind("statutory_interest") == "interest"


def test_costs_list_every_kind_per_currency_with_the_currencys_digits() -> None:
    rows: list[reports.CostRow] = [
        ("EUR", None, False, 1, D("7.5"), D("7.5")),
        ("EUR", "statutory_costs", False, 2, D("80.00"), D("57.5")),
        ("EUR", None, True, 2, D("87.50"), D("65.00")),
        ("JPY", "statutory_interest", False, 1, D("12"), D(0)),
        ("JPY", None, True, 1, D("12"), D(0)),
    ]
    eur, jpy = reports.costs(rows)
    assert eur.currency == "EUR" and eur.invoices == 2
    assert [(k.kind, k.invoices, k.charged, k.paid, k.open) for k in eur.kinds] == [
        ("admin", 1, D("7.50"), D("7.50"), D("0.00")),
        ("statutory", 2, D("80.00"), D("57.50"), D("22.50")),
        ("interest", 0, D("0.00"), D("0.00"), D("0.00")),
    ]
    assert (str(eur.charged), str(eur.paid), str(eur.open)) == ("87.50", "65.00", "22.50")
    assert [(k.kind, str(k.charged)) for k in jpy.kinds] == [
        ("admin", "0"),
        ("statutory", "0"),
        ("interest", "12"),
    ]
    assert reports.costs_csv([eur]).splitlines() == [
        "currency,kind,invoices,charged,paid,open",
        "EUR,admin,1,7.50,7.50,0.00",
        "EUR,statutory,2,80.00,57.50,22.50",
        "EUR,interest,0,0.00,0.00,0.00",
        "EUR,total,2,87.50,65.00,22.50",
    ]
