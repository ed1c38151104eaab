"""The limits of the wire (`contracts.limits`, docs/contracts.md): what cannot be stored or
computed is refused at parse time, naming the field, and what is within the limits can
always be stored and computed."""

from __future__ import annotations

import base64
import json
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from standardwebhooks import Webhook

from contracts import collection, invoice, notifier, scheduler, subscription
from contracts.debtor import DebtorSnapshot, Person
from contracts.envelope import Command, Money, MoneyTotal, ParseError, parse_envelope
from contracts.fields import (
    _in_years,
    may_hold_unstorable,
    unstorable_strings,
)
from contracts.limits import (
    MAX_ALLOWED_SERVICES,
    MAX_AMOUNT,
    MAX_CHANNELS,
    MAX_COLLECTOR_CONDITIONS,
    MAX_CUSTOM_PARAMETERS,
    MAX_DATE,
    MAX_DOCUMENTS,
    MAX_INSTALLMENTS,
    MAX_INT,
    MAX_INVOICE_LINES,
    MAX_PLAN_INVOICES,
    MAX_QUANTITY,
    MAX_RATE_PLANS,
    MAX_REPORTED_STRINGS,
    MAX_SCHEME_STEPS,
    MAX_STEP_DAYS,
    MAX_TOTAL_DIGITS,
    MIN_DATE,
)
from services.invoice.domain import add_interval
from tests.unit.test_contracts import (
    CASE_FIELDS,
    INVOICE_FIELDS,
    SUBSCRIPTION_FIELDS,
    contract_types,
    create_invoice_payload,
)
from tests.unit.test_contracts import envelope_json as body

D = Decimal
NOW = datetime(2026, 11, 22, tzinfo=UTC)
SECRET_24 = "whsec_" + base64.b64encode(bytes(range(24))).decode()


def refused(raw: bytes | str) -> set[tuple[str, str]]:
    """The (field, code) pairs a body is refused with."""
    with pytest.raises(ParseError) as err:
        parse_envelope(raw)
    return {(e.field, e.code) for e in err.value.errors}


def line(**changes: Any) -> dict[str, Any]:
    return {
        "description": "Widget",
        "quantity": "2",
        "unit_price": "50.00",
        "vat_percentage": "21",
        **changes,
    }


def invoice_body(**changes: Any) -> bytes:
    return body("CreateInvoice", create_invoice_payload(**changes))


# --- text PostgreSQL cannot store ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"description": "a\x00b"}, "payload.description"),
        ({"invoice_number": "INV\x00"}, "payload.invoice_number"),
        ({"lines": [line(), line(description="\x00")]}, "payload.lines.1.description"),
        ({"allowed_services": ["ideal", "\x00"]}, "payload.allowed_services.1"),
        (
            {"custom_parameters": [{"key": "k", "value": "v\x00"}]},
            "payload.custom_parameters.0.value",
        ),
    ],
)
def test_a_nul_character_anywhere_in_a_command_is_refused_naming_its_field(
    changes: dict[str, Any], field: str
) -> None:
    assert refused(invoice_body(**changes)) == {(field, "nul_character")}


def test_a_nul_character_deep_in_the_debtor_is_refused_naming_its_path() -> None:
    payload = create_invoice_payload()
    payload["debtor"]["address"]["city"] = "Amster\x00dam"

    assert refused(body("CreateInvoice", payload)) == {
        ("payload.debtor.address.city", "nul_character")
    }


def test_a_nul_character_is_reported_besides_the_other_errors() -> None:
    assert refused(invoice_body(description="\x00", currency="eur")) == {
        ("payload.description", "nul_character"),
        ("payload.currency", "string_pattern_mismatch"),
    }


def test_a_lone_surrogate_is_refused_and_a_surrogate_pair_is_not() -> None:
    lone = invoice_body(description="placeholder").replace(b"placeholder", b"\\ud800")
    pair = invoice_body(description="placeholder").replace(b"placeholder", b"\\ud83d\\ude00")

    assert refused(lone) == {("payload.description", "string_unicode")}
    assert parse_envelope(pair).payload.description == "\U0001f600"


def test_a_nul_character_in_an_ignored_field_of_an_event_is_refused_too() -> None:
    """An event ignores unknown fields, but nothing unstorable passes the parser."""
    raw = body(
        "TransactionStatusChanged",
        {
            "invoice_number": "INV-1",
            "transaction_key": "T-1",
            "service": "ideal",
            "amount": "1.00",
            "status": "success",
            "note\x00": "x",
        },
    )

    assert refused(raw) == {("payload.note\\x00", "nul_character")}


def test_a_timer_message_holding_a_nul_character_is_refused() -> None:
    message = json.loads(body("StepDue", {"invoice_number": "INV-1", "x": "\x00"}))
    payload = {
        "timer_id": "t-1",
        "due_at": "2026-11-22T00:00:00+00:00",
        "topic": "cm.invoice.commands",
        "key": "shop-1:INV-1",
        "message": message,
    }

    assert refused(body("ScheduleTimer", payload)) == {
        ("payload.message.payload.x", "nul_character")
    }
    with pytest.raises(ValidationError, match="nul_character"):
        scheduler.ScheduleTimer.model_validate(payload)


def test_a_utf16_body_is_checked_too() -> None:
    raw = json.dumps(json.loads(invoice_body(description="\x00"))).encode("utf-16")

    assert refused(raw) == {("payload.description", "nul_character")}


def test_text_built_directly_refuses_nul_and_lone_surrogates() -> None:
    with pytest.raises(ValidationError, match="nul_character"):
        invoice.CreateInvoice(**{**INVOICE_FIELDS, "description": "a\x00"})
    with pytest.raises(ValidationError, match="string_unicode"):
        invoice.CreateInvoice(**{**INVOICE_FIELDS, "description": "a\ud800"})


def test_at_most_a_bounded_number_of_unstorable_strings_is_reported() -> None:
    found = unstorable_strings({"payload": {"many": ["\x00"] * 1000}})

    assert len(found) == MAX_REPORTED_STRINGS
    assert found[0][0] == "payload.many.0"


def test_the_walk_survives_any_depth() -> None:
    data: Any = "\x00"
    for _ in range(10_000):
        data = [data]

    [(path, error)] = unstorable_strings(data)

    assert error.type == "nul_character" and path.count(".") == 9_999


#: Text with the characters that matter here more often than chance would give them.
TEXT = st.text(
    st.sampled_from(["a", "\x00", "\ud800", "\udc00", "é", "\U0001f600"]) | st.characters()
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


@given(JSON, st.booleans())
def test_the_cheap_pre_check_never_misses_an_unstorable_string(data: Any, ascii_: bool) -> None:
    text = json.dumps(data, ensure_ascii=ascii_)
    raw: bytes | str = text
    if storable_text(text):
        raw = text.encode()

    if unstorable_strings(data):
        assert may_hold_unstorable(raw)


def storable_text(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=50))
def test_any_storable_text_is_accepted_and_survives_the_round_trip(text: str) -> None:
    # UTF-8 has no surrogates; NUL is left out by hand.
    parsed = parse_envelope(invoice_body(description=text))

    assert parsed.payload.description == text


@given(st.text(max_size=20), st.text(max_size=20))
def test_any_text_with_a_nul_character_is_refused(before: str, after: str) -> None:
    assert refused(invoice_body(description=f"{before}\x00{after}")) == {
        ("payload.description", "nul_character")
    }


# --- one line: names and subjects go into mail headers ------------------------------------


@pytest.mark.parametrize("name", ["Anna\r\nBcc: x@example.com", "Anna\n", "A\tB", "A\u2028B"])
def test_a_name_must_be_one_line(name: str) -> None:
    payload = create_invoice_payload()
    payload["debtor"]["person"]["first_name"] = name

    assert refused(body("CreateInvoice", payload)) == {
        ("payload.debtor.person.first_name", "control_character")
    }


def test_a_template_subject_must_be_one_line_and_its_body_need_not() -> None:
    template = {
        "template_key": "reminder",
        "culture": "nl-NL",
        "channel": "email",
        "subject": "Herinnering\r\nBcc: x@example.com",
        "body": "Beste klant,\n\nbetaal [InvoiceNumber].",
    }

    assert refused(body("UpsertTemplate", template)) == {("payload.subject", "control_character")}
    assert parse_envelope(body("UpsertTemplate", {**template, "subject": "Herinnering"}))


def test_free_text_may_span_lines() -> None:
    assert parse_envelope(invoice_body(description="line 1\nline 2")).payload.description


def test_a_snapshot_reads_what_older_rules_stored() -> None:
    """Tolerant readers: a debtor stored before the one-line rule still reads."""
    snapshot = DebtorSnapshot.model_validate(
        {
            "code": "D-1",
            "person": {"first_name": "Anna\nMaria", "last_name": "de Vries"},
            "email": "anna(home)@example.com",
        }
    )

    assert snapshot.person is not None and snapshot.person.first_name == "Anna\nMaria"
    with pytest.raises(ValidationError, match="control_character"):
        Person(first_name="Anna\nMaria", last_name="de Vries")


# --- e-mail addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "anna@example.com",
        "müller@example.de",
        "anna@müller.de",
        "a+tag@example.com",
        "o'brien@example.ie",
        "a@[192.0.2.1]",
    ],
)
def test_addresses_a_mail_header_can_carry_are_accepted(email: str) -> None:
    payload = create_invoice_payload()
    payload["debtor"]["email"] = email

    assert parse_envelope(body("CreateInvoice", payload)).payload.debtor.email == email


@pytest.mark.parametrize(
    ("email", "code"),
    [
        ("anna@example.com\r\nBcc: x@example.com", "string_pattern_mismatch"),
        ("anna\x01@example.com", "control_character"),
        ("anna\x7f@example.com", "control_character"),
        ("anna\x85@example.com", "string_pattern_mismatch"),
        ("anna(home)@example.com", "email_address"),
        ("a..b@example.com", "email_address"),
        (".a@example.com", "email_address"),
        ("a,b@example.com", "email_address"),
        ("a<b@example.com", "email_address"),
        ('""@example.com', "email_address"),
        ("a@example..com", "email_address"),
        ("a@example.com.", "email_address"),
        ("ab@", "string_pattern_mismatch"),
    ],
)
def test_addresses_a_mail_header_cannot_carry_are_refused(email: str, code: str) -> None:
    payload = create_invoice_payload()
    payload["debtor"]["email"] = email

    assert refused(body("CreateInvoice", payload)) == {("payload.debtor.email", code)}


# --- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("day", ["1899-12-31", "3001-01-01", "0001-01-01", "9999-12-31"])
def test_a_date_outside_1900_to_2999_is_refused(day: str) -> None:
    assert refused(invoice_body(invoice_date=day)) == {
        ("payload.invoice_date", "date_out_of_range")
    }


@pytest.mark.parametrize("day", ["1900-01-01", "2999-12-31"])
def test_the_first_and_last_day_are_accepted(day: str) -> None:
    assert parse_envelope(invoice_body(invoice_date=day, due_date="2999-12-31"))


@pytest.mark.parametrize("occurred_at", ["3000-01-01T00:00:00+00:00", "1899-12-31T23:59:59+00:00"])
def test_the_envelopes_time_must_lie_in_1900_to_2999(occurred_at: str) -> None:
    assert refused(body("TriggerNextStep", {"invoice_number": "I"}, occurred_at=occurred_at)) == {
        ("occurred_at", "date_out_of_range")
    }


@pytest.mark.parametrize(
    ("type_name", "payload", "field"),
    [
        ("Tick", {"as_of": "3000-01-01T00:00:00+00:00"}, "payload.as_of"),
        (
            "RunBilling",
            {"subscription_key": "S-1", "as_of": "3000-01-01"},
            "payload.as_of",
        ),
        (
            "CreatePaymentPlan",
            {
                "dossier_number": "PP-1",
                "included_invoice_numbers": ["I"],
                "installment_count": 2,
                "initial_amount": "1",
                "start_date": "1800-01-01",
                "interval": "month",
                "scheme_key": "DefaultNone",
            },
            "payload.start_date",
        ),
    ],
)
def test_dates_of_other_commands_are_bounded_too(
    type_name: str, payload: dict[str, Any], field: str
) -> None:
    assert refused(body(type_name, payload)) == {(field, "date_out_of_range")}


@given(
    st.dates(MIN_DATE, MAX_DATE),
    st.integers(-MAX_STEP_DAYS, MAX_STEP_DAYS),
    st.integers(0, int((MAX_DATE - MIN_DATE).total_seconds())),
)
def test_a_step_on_any_date_with_any_offset_and_any_paused_time_is_computable(
    due: date, days: int, held_seconds: int
) -> None:
    """The invoice service's step time: the base date + days, shifted by the time held."""
    at = datetime.combine(due + timedelta(days=days), time(0), tzinfo=UTC)

    assert at + timedelta(seconds=held_seconds) > at - timedelta(days=1)


@given(
    st.dates(MIN_DATE, MAX_DATE),
    st.integers(1, MAX_INSTALLMENTS),
    st.sampled_from(["week", "month"]),
)
def test_every_installment_of_any_plan_falls_on_a_date(
    start: date, count: int, interval: str
) -> None:
    assert add_interval(start, interval, count - 1) >= start


# --- integers ---------------------------------------------------------------------------------


def scheme(*steps: dict[str, Any]) -> bytes:
    return body("UpsertScheme", {"scheme_key": "Mine", "name": "Mine", "steps": list(steps)})


@pytest.mark.parametrize("days", [MAX_STEP_DAYS + 1, -MAX_STEP_DAYS - 1, 10**12])
def test_a_scheme_step_is_at_most_ten_years_from_its_date(days: int) -> None:
    step = {"index": 1, "action": "Reminder", "days": days, "channels": ["email"]}

    [(field, _)] = refused(scheme(step))

    assert field == "payload.steps.0.days"


@pytest.mark.parametrize("days", [MAX_STEP_DAYS, -MAX_STEP_DAYS, 0])
def test_a_scheme_step_within_ten_years_parses(days: int) -> None:
    step = {"index": 1, "action": "Reminder", "days": days, "channels": ["email"]}

    assert parse_envelope(scheme(step))


@pytest.mark.parametrize(
    ("type_name", "payload", "field"),
    [
        (
            "StepDue",
            {"invoice_number": "I", "step_index": 1, "scheme_version": MAX_INT + 1},
            "payload.scheme_version",
        ),
        (
            "StepDue",
            {
                "invoice_number": "I",
                "step_index": MAX_SCHEME_STEPS + 1,
                "scheme_version": 1,
                "schedule_version": 0,
            },
            "payload.step_index",
        ),
        (
            "RetryWebhookDelivery",
            {
                "invoice_number": "I",
                "delivery_id": "1",
                "push_message_id": str(uuid.uuid4()),
                "attempt": 2**40,
            },
            "payload.attempt",
        ),
        (
            "CreateSubscription",
            {
                **json.loads(
                    subscription.CreateSubscription(**SUBSCRIPTION_FIELDS).model_dump_json()
                ),
                "interval": {"unit": "year", "count": 11},
            },
            "payload.interval.count",
        ),
        (
            "CreateSubscription",
            {
                **json.loads(
                    subscription.CreateSubscription(**SUBSCRIPTION_FIELDS).model_dump_json()
                ),
                "interval": {"unit": "month", "count": 121},
            },
            "payload.interval.count",
        ),
    ],
)
def test_counters_versions_and_intervals_are_bounded(
    type_name: str, payload: dict[str, Any], field: str
) -> None:
    payload.setdefault("schedule_version", 0)
    if type_name != "StepDue":
        payload.pop("schedule_version")

    assert {f for f, _ in refused(body(type_name, payload))} == {field}


def test_max_step_index_is_bounded() -> None:
    assert refused(invoice_body(max_step_index=MAX_SCHEME_STEPS + 1)) == {
        ("payload.max_step_index", "less_than_equal")
    }


# --- amounts, quantities and their products -----------------------------------------------


@pytest.mark.parametrize(
    "amount", [str(MAX_AMOUNT + D("0.01")), str(-MAX_AMOUNT - 1), "1e15", "9999999999999999"]
)
def test_an_amount_beyond_a_trillion_is_refused(amount: str) -> None:
    [(field, _)] = refused(invoice_body(amount_debit=amount))

    assert field == "payload.amount_debit"


def test_an_amount_of_a_trillion_parses() -> None:
    parsed = parse_envelope(invoice_body(amount_debit=str(MAX_AMOUNT), amount_vat="0"))

    assert parsed.payload.amount_debit == MAX_AMOUNT


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"quantity": str(MAX_QUANTITY + 1)}, "payload.lines.0.quantity"),
        ({"quantity": str(-MAX_QUANTITY - 1)}, "payload.lines.0.quantity"),
        ({"vat_percentage": "100.01"}, "payload.lines.0.vat_percentage"),
        ({"vat_percentage": "-1"}, "payload.lines.0.vat_percentage"),
        ({"unit_price": "1e13"}, "payload.lines.0.unit_price"),
    ],
)
def test_line_numbers_are_bounded(changes: dict[str, Any], field: str) -> None:
    assert {f for f, _ in refused(invoice_body(lines=[line(**changes)]))} == {field}


def test_a_line_whose_total_does_not_fit_an_amount_is_refused() -> None:
    big = line(quantity=str(MAX_QUANTITY), unit_price=str(MAX_AMOUNT), vat_percentage="0")

    assert refused(invoice_body(lines=[line(), big])) == {
        ("payload.lines.1", "line_total_too_large")
    }


def test_vat_counts_towards_the_lines_total() -> None:
    at_the_limit = line(quantity="1", unit_price=str(MAX_AMOUNT), vat_percentage="0")
    with_vat = line(quantity="1", unit_price=str(MAX_AMOUNT), vat_percentage="21")

    assert parse_envelope(invoice_body(lines=[at_the_limit]))
    assert refused(invoice_body(lines=[with_vat])) == {("payload.lines.0", "line_total_too_large")}


def test_a_rate_plan_whose_total_does_not_fit_an_amount_is_refused() -> None:
    plan = {
        "product_code": "P",
        "description": "Plan",
        "unit_price": "1000000",
        "quantity": "1000000000",
        "vat_percentage": "0",
        "start_date": "2026-01-01",
    }
    payload = json.loads(subscription.CreateSubscription(**SUBSCRIPTION_FIELDS).model_dump_json())

    assert refused(body("CreateSubscription", {**payload, "rate_plans": [plan]})) == {
        ("payload.rate_plans.0", "line_total_too_large")
    }


def test_a_snapshot_line_reads_what_older_rules_stored() -> None:
    stored = line(quantity="1e12", vat_percentage="150", unit_price="1e13")

    assert invoice.InvoiceLineSnapshot.model_validate(stored).vat_percentage == 150
    with pytest.raises(ValidationError):
        invoice.InvoiceLine.model_validate(stored)


AMOUNT = TypeAdapter(Money)
TOTAL = TypeAdapter(MoneyTotal)
QUANTITY = st.decimals(-MAX_QUANTITY, MAX_QUANTITY, places=4)
PRICE = st.decimals(-MAX_AMOUNT, MAX_AMOUNT, places=4)
VAT = st.decimals(0, 100, places=4)


@settings(max_examples=300)
@given(QUANTITY, PRICE, VAT, st.sampled_from([0, 2, 3]))
def test_any_line_that_parses_has_a_total_that_fits_and_computes(
    quantity: Decimal, price: Decimal, vat: Decimal, digits: int
) -> None:
    """The notifier's line amount (quantity x price incl. VAT, rounded to the currency)
    never raises and always fits an amount, and so does the sum of a full invoice."""
    try:
        parsed = invoice.InvoiceLine(
            description="x", quantity=quantity, unit_price=price, vat_percentage=vat
        )
    except ValidationError:
        return
    total = (parsed.quantity * parsed.unit_price * (1 + parsed.vat_percentage / 100)).quantize(
        Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN
    )

    assert abs(total) <= MAX_AMOUNT
    TOTAL.validate_python(total * MAX_INVOICE_LINES)  # raises when it does not fit


def test_sums_of_thousands_of_amounts_fit_a_total() -> None:
    largest = AMOUNT.validate_python(MAX_AMOUNT)

    assert TOTAL.validate_python(sum([largest] * 9_999, Decimal(0)))
    assert len(str(MAX_AMOUNT * 9_999)) <= MAX_TOTAL_DIGITS - 4


# --- list lengths -----------------------------------------------------------------------------

STEP = {"index": 1, "action": "Reminder", "days": 7, "channels": ["email"]}
PLAN = json.loads(
    subscription.RatePlan(**SUBSCRIPTION_FIELDS["rate_plans"][0].model_dump()).model_dump_json()
)
DOCUMENT = {"name": "a.pdf", "content_type": "application/pdf", "content_base64": "JVBERi0="}
CASE = json.loads(collection.CreateCase(**CASE_FIELDS).model_dump_json())
TRANSFER = {**json.loads(collection.TransferCase(**CASE_FIELDS, agency_code="A").model_dump_json())}


def _plan_payload(numbers: list[str]) -> dict[str, Any]:
    return {
        "dossier_number": "PP-1",
        "included_invoice_numbers": numbers,
        "installment_count": 2,
        "initial_amount": "1",
        "start_date": "2026-12-01",
        "interval": "month",
        "scheme_key": "DefaultNone",
    }


#: (type, payload with n items, the list's field, its limit)
LISTS: list[tuple[str, Any, str, int]] = [
    (
        "CreateInvoice",
        lambda n: create_invoice_payload(lines=[line()] * n),
        "lines",
        MAX_INVOICE_LINES,
    ),
    (
        "CreateInvoice",
        lambda n: create_invoice_payload(custom_parameters=[{"key": "k", "value": "v"}] * n),
        "custom_parameters",
        MAX_CUSTOM_PARAMETERS,
    ),
    (
        "CreateInvoice",
        lambda n: create_invoice_payload(allowed_services=["ideal"] * n),
        "allowed_services",
        MAX_ALLOWED_SERVICES,
    ),
    (
        "UpsertScheme",
        lambda n: {"scheme_key": "S", "name": "S", "steps": [STEP] * n},
        "steps",
        MAX_SCHEME_STEPS,
    ),
    (
        "UpsertScheme",
        lambda n: {"scheme_key": "S", "name": "S", "steps": [{**STEP, "channels": ["email"] * n}]},
        "steps.0.channels",
        MAX_CHANNELS,
    ),
    (
        "CreatePaymentPlan",
        lambda n: _plan_payload([f"I-{i}" for i in range(n)]),
        "included_invoice_numbers",
        MAX_PLAN_INVOICES,
    ),
    (
        "CreateSubscription",
        lambda n: {
            **json.loads(subscription.CreateSubscription(**SUBSCRIPTION_FIELDS).model_dump_json()),
            "rate_plans": [PLAN] * n,
        },
        "rate_plans",
        MAX_RATE_PLANS,
    ),
    (
        "UpdateSubscription",
        lambda n: {"subscription_key": "S", "add_rate_plans": [PLAN] * n},
        "add_rate_plans",
        MAX_RATE_PLANS,
    ),
    (
        "UpdateSubscription",
        lambda n: {"subscription_key": "S", "change_rate_plans": [{"product_code": "P"}] * n},
        "change_rate_plans",
        MAX_RATE_PLANS,
    ),
    (
        "UpdateSubscription",
        lambda n: {
            "subscription_key": "S",
            "stop_rate_plans": [{"product_code": "P", "end_date": "2027-01-01"}] * n,
        },
        "stop_rate_plans",
        MAX_RATE_PLANS,
    ),
    (
        "UpsertDebtCollectorConfiguration",
        lambda n: {
            "configuration_key": "C",
            "agency_code": "A",
            "conditions": [{"min_amount": "1", "action": "review"}] * n,
        },
        "conditions",
        MAX_COLLECTOR_CONDITIONS,
    ),
    ("CreateCase", lambda n: {**CASE, "line_items": [line()] * n}, "line_items", MAX_INVOICE_LINES),
    (
        "TransferCase",
        lambda n: {**TRANSFER, "documents": [DOCUMENT] * n},
        "documents",
        MAX_DOCUMENTS,
    ),
]


@pytest.mark.parametrize(
    ("type_name", "payload", "field", "limit"),
    LISTS,
    ids=[f"{type_name}.{field}" for type_name, _, field, _ in LISTS],
)
def test_a_list_one_longer_than_its_limit_is_refused_and_its_limit_parses(
    type_name: str, payload: Any, field: str, limit: int
) -> None:
    assert parse_envelope(body(type_name, payload(limit)))
    assert refused(body(type_name, payload(limit + 1))) == {(f"payload.{field}", "too_long")}


# --- every command field has its limits (so a new one cannot forget them) -----------------

#: Fields free of a limit on purpose: a timer carries a whole envelope (checked for
#: unstorable text; its size is the broker's message size).
UNLIMITED = {("ScheduleTimer", "message")}


def _leaves(annotation: Any, metadata: list[Any]) -> Iterator[tuple[Any, list[Any]]]:
    """The leaf types of an annotation with the constraints that apply to each."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        yield from _leaves(base, metadata + _flat(extra))
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                yield from _leaves(arg, metadata)
    elif origin is list:
        yield list, metadata
        yield from _leaves(get_args(annotation)[0], [])
    elif origin is dict:
        yield dict, metadata
    elif origin is Literal:
        return
    else:
        yield annotation, metadata


def _flat(metadata: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in metadata:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return flat


def _has(metadata: list[Any], *kinds: type) -> bool:
    return any(isinstance(item, kinds) for item in metadata)


def _problems(model: type[BaseModel], path: str, seen: set[type]) -> Iterator[str]:
    if model in seen or model.model_config.get("extra") != "forbid":
        return  # tolerant blocks (snapshots) are read as stored
    seen.add(model)
    for name, info in model.model_fields.items():
        here = f"{path}.{name}"
        if (model.__name__, name) in UNLIMITED:
            continue
        for leaf, metadata in _leaves(info.annotation, list(info.metadata)):
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                yield from _problems(leaf, here, seen)
            elif leaf in (list, str) and not _has(metadata, annotated_types.MaxLen):
                yield f"{here}: a {leaf.__name__} without a maximum length"
            elif leaf is int and not _has(metadata, annotated_types.Le, annotated_types.Lt):
                yield f"{here}: an int without a maximum"
            elif leaf in (date, datetime) and not any(
                isinstance(item, AfterValidator) and item.func is _in_years for item in metadata
            ):
                yield f"{here}: a {leaf.__name__} without the 1900..2999 bound"
            elif leaf is dict:
                yield f"{here}: a dict"


def test_the_check_finds_every_unbounded_field() -> None:
    class Loose(Command):
        text: str
        items: list[int]
        count: int | None = None
        day: date

    assert len(list(_problems(Loose, "Loose", set()))) == 5  # the list, and its items


def test_every_string_list_integer_and_date_of_every_command_is_bounded() -> None:
    problems = [
        problem
        for name, cls in sorted(contract_types().items())
        if issubclass(cls, Command)
        for problem in _problems(cls, name, set())
    ]

    assert problems == []


# --- webhooks -----------------------------------------------------------------------------------


def webhook(**changes: Any) -> bytes:
    return body(
        "RegisterWebhook", {"url": "https://shop.example/push", "secret": SECRET_24, **changes}
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://shop.example:abc/",
        "http://shop.example:0/",
        "http://shop.example:65536/",
        "http:///push",
        "http://:80/push",
        "https://shop.example/pu\x7fsh",
    ],
)
def test_a_webhook_url_that_does_not_parse_is_refused(url: str) -> None:
    assert refused(webhook(url=url)) == {("payload.url", "invalid_url")}


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/push",
        "http://shop.example:8080/push?x=1",
        "https://[::1]:8443/push",
        "https://müller.example/push",
    ],
)
def test_an_absolute_http_url_with_a_host_is_accepted(url: str) -> None:
    assert parse_envelope(webhook(url=url)).payload.url == url


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_abcde",
        "whsec_" + base64.b64encode(bytes(23)).decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
        "whsec_AA==AA",
    ],
)
def test_a_secret_that_is_not_a_standard_webhooks_key_is_refused(secret: str) -> None:
    [(field, _)] = refused(webhook(secret=secret))

    assert field == "payload.secret"


@given(st.binary(min_size=24, max_size=64), st.booleans())
def test_every_accepted_secret_signs_like_its_key(key: bytes, padded: bool) -> None:
    encoded = base64.b64encode(key).decode()
    secret = "whsec_" + (encoded if padded else encoded.rstrip("="))

    parsed = notifier.RegisterWebhook(url="https://shop.example/push", secret=secret)

    signed_at = datetime(2026, 11, 22, tzinfo=UTC)
    assert Webhook(parsed.secret).sign("msg_1", signed_at, "{}") == Webhook(key).sign(
        "msg_1", signed_at, "{}"
    )


# --- strings without a natural length -------------------------------------------------------


def test_a_timer_topic_has_a_maximum_length() -> None:
    payload = {
        "timer_id": "t",
        "due_at": "2026-11-22T00:00:00+00:00",
        "topic": "x" * 10_000,
        "key": "k",
        "message": {"message_id": "m", "type": "StepDue", "website_key": "w", "payload": {}},
    }

    assert refused(body("ScheduleTimer", payload)) == {("payload.topic", "string_too_long")}
