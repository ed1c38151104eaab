"""Payloads for tests of the collection service (services/collection)."""

from __future__ import annotations

from typing import Any


def manual_case(key: str, **overrides: Any) -> dict[str, Any]:
    """A CreateCase payload of a case a merchant hands over by hand: 121.00 EUR."""
    payload: dict[str, Any] = {
        "case_key": key,
        "external_id": f"EXT-{key}",
        "billing_address": {
            "name": "Jan Jansen",
            "given_name": "Jan",
            "family_name": "Jansen",
            "gender": "male",
            "street": "Dorpsstraat",
            "house_number": "1",
            "postal_code": "1234 AB",
            "city": "Utrecht",
            "country": "NL",
        },
        "line_items": [
            {
                "description": "Consulting",
                "quantity": "2",
                "unit_price": "50.00",
                "vat_percentage": "21",
            }
        ],
        "currency": "EUR",
        "due_date": "2026-01-15",
        "amount": "121.00",
        "language": "nl-NL",
        "reference": "R-1",
    }
    payload.update(overrides)
    return payload
