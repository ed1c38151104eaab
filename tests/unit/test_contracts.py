"""The wire (`contracts/`): every message parses back to itself, typos and too many
decimals are parse errors, money is a string in envelopes and a number in the push, the
push keeps Buckaroo's field names, and the catalog and AsyncAPI document cover it all."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import contracts
from contracts import catalog, collection, invoice, notifier, payments, scheduler, subscription
from contracts.asyncapi import build, render
from contracts.debtor import (
    Address,
    Company,
    Debtor,
    DebtorSnapshot,
    Person,
    Phone,
    UnreachableFlags,
    UnreachableFlagsSnapshot,
)
from contracts.envelope import Message, ParseError, new_envelope, parse_envelope, registered_types
from contracts.fields import KeyValue, KeyValueSnapshot, minor_unit, with_minor_unit
from contracts.limits import MAX_AMOUNT
from contracts.push import InvoicePush, encode_reference, push_from_event
from contracts.results import CommandAccepted, CommandRejected, DeadLetter, ResultError
from contracts.topics import ALL_TOPICS, PUSH_INVOICE

NOW = datetime(2026, 11, 22, tzinfo=UTC)
D = Decimal
#: A Standard Webhooks key: `whsec_` and the base64 of 24 bytes.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# --- samples of every message ---------------------------------------------------------

DEBTOR = Debtor(
    code="D-1",
    person=Person(first_name="Anna", last_name="de Vries", culture="nl-NL"),
    email="anna@example.com",
    phone=Phone(mobile="+31612345678"),
    address=Address(
        street="Kerkstraat",
        house_number="1a",
        postal_code="1011 AB",
        city="Amsterdam",
        country="NL",
    ),
)
COMPANY_DEBTOR = Debtor(code="D-2", company=Company(name="Acme BV", chamber_of_commerce="123"))
LINE = invoice.InvoiceLine(
    sku="SKU-1",
    description="Widget",
    quantity=D("2"),
    unit_price=D("50.00"),
    vat_percentage=D("21"),
)
TRANSACTION = payments.Transaction(
    transaction_key="T-1",
    service="ideal",
    amount=D("121.00"),
    status=payments.TransactionStatus.SUCCESS,
)
INVOICE_FIELDS: dict[str, Any] = {
    "invoice_number": "INV-0001",
    "invoice_date": date(2026, 11, 1),
    "due_date": date(2026, 11, 15),
    "currency": "EUR",
    "amount_debit": D("121.00"),
    "amount_vat": D("21.00"),
    "description": "November",
    "culture": "nl-NL",
    "pay_link": "https://pay.example.com/INV-0001",
    "allowed_services": ["ideal"],
    "lines": [LINE],
    "debtor": DEBTOR,
    "custom_parameters": [KeyValue(key="order", value="O-9")],
}
SNAPSHOT = invoice.InvoiceSnapshot(
    invoice_key="2EC4B83B55E74",
    invoice_number="INV-0001",
    website_key="shop-1",
    type=invoice.InvoiceType.REGULAR_INVOICE,
    status_code=invoice.InvoiceStatus.ACTIVE,
    is_test=False,
    culture="nl-NL",
    invoice_date=date(2026, 11, 1),
    due_date=date(2026, 11, 15),
    pay_link="https://pay.example.com/INV-0001",
    debtor_code="D-1",
    debtor_guid="8c1e",
    debtor=DebtorSnapshot(**DEBTOR.model_dump(), unreachable=UnreachableFlagsSnapshot(email=True)),
    scheme_key="DefaultCM1",
    scheme_version=1,
    previous_step_index=2,
    previous_step_date_time=NOW,
    next_step_index=3,
    next_step_due_at=NOW + timedelta(days=14),
    currency="EUR",
    amount_debit=D("121"),
    amount_credit=D(0),
    amount_admin_costs=D(0),
    amount_credit_notes=D(0),
    amount_paid=D(0),
    amount_admin_costs_paid=D(0),
    amount_pending_slow=D(0),
    open_amount=D("121"),
    open_amount_admin_costs=D(0),
    open_amount_incl_admin_costs=D("121"),
    is_paid=False,
    custom_parameters=[KeyValueSnapshot(key="order", value="O-9")],
    lines=[invoice.InvoiceLineSnapshot(**LINE.model_dump())],
)
REMINDER = invoice.InvoiceEvent.of(
    invoice.InvoiceEventName.SENT_REMINDER_MESSAGE,
    invoice=SNAPSHOT,
    sequence=3,
    parameters={"StepIndex": "2"},
)
RATE_PLAN = subscription.RatePlan(
    product_code="GOLD",
    description="Gold plan",
    unit_price=D("10.00"),
    vat_percentage=D("21"),
    start_date=date(2026, 1, 1),
)
SUBSCRIPTION_FIELDS: dict[str, Any] = {
    "subscription_key": "S-1",
    "debtor": DEBTOR,
    "currency": "EUR",
    "interval": subscription.BillingInterval(unit=subscription.IntervalUnit.MONTH),
    "start_date": date(2026, 1, 1),
    "rate_plans": [RATE_PLAN],
}
BILLING_ADDRESS = collection.BillingAddress(
    name="Anna de Vries", street="Kerkstraat", city="Amsterdam", country="NL"
)
CASE_FIELDS: dict[str, Any] = {
    "case_key": "C-1",
    "invoice_number": "INV-0001",
    "external_id": "EXT-1",
    "billing_address": BILLING_ADDRESS,
    "line_items": [LINE],
    "currency": "EUR",
    "due_date": date(2026, 11, 15),
    "amount": D("121.00"),
}
STEP_DUE = invoice.StepDue(
    invoice_number="INV-0001", step_index=2, scheme_version=1, schedule_version=0
)

SAMPLES: list[Message] = [
    invoice.CreateInvoice(**INVOICE_FIELDS),
    invoice.CreateCombinedInvoice(**INVOICE_FIELDS, transaction=TRANSACTION),
    invoice.CreateCreditNote(
        original_invoice_number="INV-0001", credit_note_number="CN-1", amount=D("21.00")
    ),
    invoice.AddOrUpdateDebtor(debtor=COMPANY_DEBTOR, unreachable=UnreachableFlags(mobile=True)),
    invoice.CreatePaymentPlan(
        dossier_number="PP-1",
        included_invoice_numbers=["INV-0001"],
        installment_count=3,
        initial_amount=D("50"),
        start_date=date(2026, 12, 1),
        interval=invoice.PlanInterval.MONTH,
        scheme_key="DefaultNone",
    ),
    invoice.TerminatePaymentPlan(dossier_number="PP-1"),
    invoice.PauseInvoice(invoice_number="INV-0001", reason="on hold"),
    invoice.UnpauseInvoice(invoice_number="INV-0001"),
    invoice.RegisterDispute(invoice_number="INV-0001"),
    invoice.ResolveDispute(invoice_number="INV-0001"),
    invoice.WriteOffInvoice(invoice_number="INV-0001"),
    invoice.CancelInvoice(invoice_number="INV-0001"),
    invoice.SetEmergency(invoice_number="INV-0001", reason="fraud"),
    invoice.TriggerNextStep(invoice_number="INV-0001"),
    invoice.CreateCustomEvent(invoice_number="INV-0001", message="Call [DebtorCode]"),
    invoice.UpsertScheme(
        scheme_key="Mine",
        name="Mine",
        steps=[
            invoice.SchemeStep(
                index=1,
                action=invoice.StepAction.REMINDER,
                days=7,
                channels=[invoice.Channel.EMAIL, invoice.Channel.LETTER],
                states_costs=True,
            ),
            invoice.SchemeStep(
                index=2,
                action=invoice.StepAction.ADMIN_COST_INCREASE,
                days=24,
                admin_cost="statutory",
            ),
            invoice.SchemeStep(
                index=3,
                action=invoice.StepAction.ADMIN_COST_INCREASE,
                days=30,
                admin_cost=D("7.50"),
            ),
        ],
    ),
    invoice.UpdateMerchantSettings(
        time_zone="Europe/Amsterdam", default_culture="en-GB", sender_name="Shop One"
    ),
    STEP_DUE,
    invoice.RecordMessageOutcome(
        invoice_number="INV-0001",
        step_index=2,
        outcome=invoice.MessageOutcome.SENT_BACKUP,
        channel=invoice.Channel.LETTER,
    ),
    invoice.SetCollectionStatus(
        invoice_number="INV-0001", status_code=invoice.CollectionStatusCode(72), case_key="C-1"
    ),
    invoice.RegisterCollectedAmount(invoice_number="INV-0001", amount=D("60"), case_key="C-1"),
    REMINDER,
    payments.TransactionStatusChanged(
        invoice_number="INV-0001",
        transaction_key="T-1",
        service="sepadirectdebit",
        amount=D("121.00"),
        status=payments.TransactionStatus.PENDING,
        is_slow=True,
    ),
    scheduler.ScheduleTimer(
        timer_id="invoice:shop-1:INV-0001:step:2",
        due_at=NOW,
        topic="cm.invoice.commands",
        key="shop-1:INV-0001",
        message=json.loads(new_envelope(STEP_DUE, website_key="shop-1", occurred_at=NOW).to_json()),
    ),
    scheduler.CancelTimer(timer_id="invoice:shop-1:INV-0001:step:2"),
    scheduler.Tick(as_of=NOW),
    scheduler.TimersFired(
        fired_at=NOW + timedelta(seconds=1),
        timers=[
            scheduler.FiredTimer(
                timer_id="t-1",
                due_at=NOW,
                topic="cm.invoice.internal",
                message_id=uuid.UUID("7a0f2c1e-8f3b-4a59-a0e4-6c2d9b1e4f00"),
                correlation_id=uuid.UUID("7a0f2c1e-8f3b-4a59-a0e4-6c2d9b1e4f00"),
            )
        ],
    ),
    scheduler.TickCompleted(as_of=NOW, fired=3),
    notifier.SendMessage(
        invoice_number="INV-0001",
        step_index=2,
        action=invoice.StepAction.REMINDER,
        template_key="reminder",
        channels=[invoice.Channel.EMAIL, invoice.Channel.LETTER],
        invoice=SNAPSHOT,
        sender_name="Shop One",
    ),
    notifier.UpsertTemplate(
        template_key="reminder",
        culture="nl-NL",
        channel=invoice.Channel.EMAIL,
        subject="Herinnering",
        body="Betaal [InvoiceNumber]",
    ),
    notifier.RegisterWebhook(url="https://shop.example.com/push", secret=WEBHOOK_SECRET),
    notifier.RetryWebhookDelivery(
        invoice_number="INV-0001", delivery_id="d-1", push_message_id=uuid.uuid4(), attempt=2
    ),
    notifier.EnableKafkaPush(partitions=4),
    notifier.DisableKafkaPush(),
    notifier.WebhookDeliveryAttempted(
        invoice_number="INV-0001",
        delivery_id="7",
        push_message_id=uuid.uuid4(),
        attempt=1,
        outcome=notifier.DeliveryOutcome.FAILED,
        status_code=503,
        error="http_503",
        duration_ms=12,
        attempted_at=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        next_retry_at=datetime(2026, 1, 5, 9, 0, 5, tzinfo=UTC),
    ),
    subscription.CreateSubscription(**SUBSCRIPTION_FIELDS),
    subscription.CreateCombinedSubscription(**SUBSCRIPTION_FIELDS, transaction=TRANSACTION),
    subscription.UpdateSubscription(
        subscription_key="S-1",
        change_rate_plans=[subscription.RatePlanChange(product_code="GOLD", quantity=D(2))],
        stop_rate_plans=[subscription.RatePlanStop(product_code="GOLD", end_date=date(2027, 1, 1))],
    ),
    subscription.StopSubscription(subscription_key="S-1", reason="unpaid", invoice_number="S-1-3"),
    subscription.RunBilling(subscription_key="S-1", as_of=date(2026, 12, 1)),
    subscription.RunMerchantBilling(as_of=date(2026, 12, 1), after_key="S-1"),
    payments.CollectPayment(
        invoice_number="S-1-2",
        currency="EUR",
        amount=Decimal("12.10"),
        service="sepadirectdebit",
        mandate_reference="MANDATE-1",
        subscription_key="S-1",
    ),
    subscription.SubscriptionEvent(
        event=subscription.SubscriptionEventName.PERIOD_BILLED,
        invoice_number="S-1-1",
        period_index=1,
        subscription=subscription.SubscriptionSnapshot(
            subscription_key="S-1",
            status=subscription.SubscriptionStatus.ACTIVE,
            debtor=DebtorSnapshot(**DEBTOR.model_dump()),
            currency="EUR",
            scheme_key="DefaultCM1",
            interval=subscription.BillingIntervalSnapshot(unit=subscription.IntervalUnit.YEAR),
            billing_timing=subscription.BillingTiming.ARREARS,
            start_date=date(2026, 1, 1),
            rate_plans=[subscription.RatePlanSnapshot(**RATE_PLAN.model_dump())],
            next_period_index=2,
            next_billing_date=date(2027, 1, 1),
        ),
    ),
    collection.UpsertDebtCollectorConfiguration(
        configuration_key="default",
        agency_code="AG-1",
        conditions=[
            collection.CollectorCondition(
                min_amount=D("500"), action=collection.ConditionAction.TRANSFER
            )
        ],
    ),
    collection.CreateCase(**CASE_FIELDS),
    collection.AttachDocument(
        case_key="C-1",
        name="invoice.pdf",
        content_type="application/pdf",
        content_base64="JVBERi0=",
    ),
    collection.MarkAsPrepared(case_key="C-1"),
    collection.ReviewCase(case_key="C-1", approve=False, reason="too small"),
    collection.AgencyAccepted(case_key="C-1", agency_reference="AG-REF"),
    collection.AgencyRefused(case_key="C-1", reason="unknown debtor"),
    collection.AgencyProcessed(case_key="C-1", complete=False, collected_amount=D("60.00")),
    collection.AddCollectedAmount(case_key="C-1", amount=D("60.00")),
    collection.CloseCase(case_key="C-1", reason="settled"),
    collection.RecallCase(case_key="C-1", agency_code="AG-1", reason="paid directly"),
    collection.TransferCase(
        **CASE_FIELDS,
        agency_code="AG-1",
        documents=[
            collection.Document(
                name="invoice.pdf", content_type="application/pdf", content_base64="JVBERi0="
            )
        ],
    ),
    collection.CaseEvent(
        event=collection.CaseEventName.PROCESSED,
        case=collection.CaseSnapshot(
            case_key="C-1",
            state=collection.CaseState.CLOSED,
            external_id="EXT-1",
            currency="EUR",
            due_date=date(2026, 11, 15),
            amount=D("121.00"),
            collected_amount=D("60.00"),
            document_names=["invoice.pdf"],
        ),
    ),
    CommandAccepted(command_type="CreateInvoice", command_id=uuid.uuid4(), keys={"a": "b"}),
    CommandRejected(
        command_type="CreateInvoice",
        command_id=uuid.uuid4(),
        errors=[ResultError(field="payload.due_date", code="before_invoice_date", message="…")],
    ),
    DeadLetter(
        service="invoice",
        topic="cm.invoice.commands",
        partition=0,
        offset=7,
        key="k",
        raw_value="{",
        error="invalid_json",
    ),
]


def sample_of(type_name: str) -> Message:
    return next(sample for sample in SAMPLES if type_name == type(sample).TYPE)


def contract_types() -> dict[str, type[Message]]:
    """Registered types defined in contracts/ (other tests may register their own)."""
    return {
        name: cls
        for name, cls in registered_types().items()
        if cls.__module__.startswith("contracts.")
    }


def envelope_json(type_name: str, payload: dict[str, Any], **envelope: Any) -> bytes:
    """An envelope of shop-1 as bytes on the wire; `envelope` adds or replaces its fields."""
    return json.dumps(
        {
            "message_id": str(uuid.uuid4()),
            "type": type_name,
            "website_key": "shop-1",
            "occurred_at": "2026-11-21T10:00:00+00:00",
            "payload": payload,
            **envelope,
        }
    ).encode()


def create_invoice_payload(**changes: Any) -> dict[str, Any]:
    body = json.loads(
        new_envelope(
            invoice.CreateInvoice(**INVOICE_FIELDS), website_key="shop-1", occurred_at=NOW
        ).to_json()
    )["payload"]
    body.update(changes)
    return body


# --- round trips ------------------------------------------------------------------------


def test_there_is_a_sample_of_every_registered_message() -> None:
    assert {type(sample).TYPE for sample in SAMPLES} == set(contract_types())


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).TYPE)
def test_every_message_round_trips_through_its_envelope(sample: Message) -> None:
    envelope = new_envelope(sample, website_key="shop-1", occurred_at=NOW)

    parsed = parse_envelope(envelope.to_json())

    assert parsed.type == type(sample).TYPE
    assert parsed.payload == sample
    assert parsed == envelope
    assert parsed.to_json() == envelope.to_json()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).TYPE)
def test_every_message_is_accepted_on_its_topic_only(sample: Message) -> None:
    raw = new_envelope(sample, website_key="shop-1", occurred_at=NOW).to_json()
    topic = catalog.topic_for_type(type(sample).TYPE)

    assert parse_envelope(raw, allowed=catalog.types_for_topic(topic)).payload == sample
    other = next(t for t in ALL_TOPICS if t not in {topic, PUSH_INVOICE})
    with pytest.raises(ParseError) as err:
        parse_envelope(raw, allowed=catalog.types_for_topic(other))
    assert err.value.errors[0].code == "unknown_type"


def test_importing_contracts_registers_every_module() -> None:
    modules = {cls.__module__ for cls in contract_types().values()}

    assert contracts.invoice.__name__ in modules
    assert modules == {
        "contracts.collection",
        "contracts.invoice",
        "contracts.notifier",
        "contracts.payments",
        "contracts.results",
        "contracts.scheduler",
        "contracts.subscription",
    }


# --- parse errors -------------------------------------------------------------------------


def test_a_typo_in_a_command_field_is_a_parse_error_naming_the_field() -> None:
    body = create_invoice_payload(due_dat="2026-11-15")

    with pytest.raises(ParseError) as err:
        parse_envelope(envelope_json("CreateInvoice", body))

    assert [(e.field, e.code) for e in err.value.errors] == [("payload.due_dat", "extra_forbidden")]
    assert err.value.attributable
    assert err.value.type == "CreateInvoice"


def test_a_typo_deep_inside_a_command_is_a_parse_error_naming_its_path() -> None:
    body = create_invoice_payload()
    body["debtor"]["address"]["stret"] = "Kerkstraat"

    with pytest.raises(ParseError) as err:
        parse_envelope(envelope_json("CreateInvoice", body))

    assert [(e.field, e.code) for e in err.value.errors] == [
        ("payload.debtor.address.stret", "extra_forbidden")
    ]


def test_a_missing_required_field_is_a_parse_error() -> None:
    body = create_invoice_payload()
    del body["currency"]

    with pytest.raises(ParseError) as err:
        parse_envelope(envelope_json("CreateInvoice", body))

    assert [(e.field, e.code) for e in err.value.errors] == [("payload.currency", "missing")]


def test_an_unknown_field_in_an_event_is_ignored() -> None:
    body = json.loads(new_envelope(REMINDER, website_key="shop-1", occurred_at=NOW).to_json())
    body["payload"]["new_field"] = 1
    body["payload"]["invoice"]["new_field"] = 2
    body["payload"]["invoice"]["debtor"]["address"]["new_field"] = 3

    assert parse_envelope(json.dumps(body)).payload == REMINDER


@pytest.mark.parametrize("amount", ["121.00001", 121.00001, "0.12345"])
def test_more_than_four_decimals_is_a_parse_error(amount: Any) -> None:
    with pytest.raises(ParseError) as err:
        parse_envelope(envelope_json("CreateInvoice", create_invoice_payload(amount_debit=amount)))

    assert [e.field for e in err.value.errors] == ["payload.amount_debit"]


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_debit": "-121.00"},
        {"amount_vat": "500.00", "amount_debit": "121.00"},
        {"due_date": "2026-10-01"},
        {"currency": "XYZ"},
        {"amount_debit": "121.001"},
    ],
    ids=[
        "negative",
        "vat-above-amount",
        "due-before-invoice-date",
        "unknown-currency",
        "beyond-minor-unit",
    ],
)
def test_business_rule_violations_are_not_parse_errors(changes: dict[str, Any]) -> None:
    """docs/invoices.md: these become Rejected invoices, so they must parse."""
    parsed = parse_envelope(envelope_json("CreateInvoice", create_invoice_payload(**changes)))

    assert isinstance(parsed.payload, invoice.CreateInvoice)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"currency": "eur"}, "payload.currency"),
        ({"invoice_number": "a:b"}, "payload.invoice_number"),
        ({"invoice_number": ""}, "payload.invoice_number"),
        ({"invoice_date": "1 November"}, "payload.invoice_date"),
        ({"is_test": "maybe"}, "payload.is_test"),
    ],
)
def test_shape_errors_are_parse_errors(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_envelope(envelope_json("CreateInvoice", create_invoice_payload(**changes)))

    assert [e.field for e in err.value.errors] == [field]


def test_a_debtor_is_a_person_or_a_company() -> None:
    with pytest.raises(ValidationError):
        Debtor(code="D-1")
    with pytest.raises(ValidationError):
        Debtor(code="D-1", person=Person(first_name="A", last_name="B"), company=Company(name="C"))


@pytest.mark.parametrize("code", [70, 80, 0])
def test_collection_status_is_one_of_the_agency_codes(code: int) -> None:
    with pytest.raises(ValidationError):
        invoice.SetCollectionStatus.model_validate(
            {"invoice_number": "INV-1", "status_code": code, "case_key": "C-1"}
        )


def test_a_timer_names_a_base_topic_and_carries_an_envelope() -> None:
    fields: dict[str, Any] = {"timer_id": "t", "due_at": NOW, "key": "k"}
    message = json.loads(new_envelope(STEP_DUE, website_key="shop-1", occurred_at=NOW).to_json())

    with pytest.raises(ValidationError, match="base name"):
        scheduler.ScheduleTimer(**fields, topic="test-1.cm.invoice.commands", message=message)
    with pytest.raises(ValidationError, match="not an envelope"):
        scheduler.ScheduleTimer(**fields, topic="cm.invoice.commands", message={"type": "X"})


def test_a_timer_for_an_envelope_names_its_topic_and_key() -> None:
    envelope = new_envelope(STEP_DUE, website_key="shop-1", occurred_at=NOW)

    timer = catalog.timer_for("t-1", NOW, envelope)

    assert (timer.topic, timer.key) == ("cm.invoice.internal", "shop-1:INV-0001")
    assert parse_envelope(json.dumps(timer.message)) == envelope


def test_timestamps_need_an_offset() -> None:
    with pytest.raises(ValidationError):
        scheduler.Tick.model_validate({"as_of": "2026-11-22T00:00:00"})


def test_webhook_secrets_start_with_whsec() -> None:
    with pytest.raises(ValidationError):
        notifier.RegisterWebhook(url="https://shop.example.com", secret="c2VjcmV0")


def test_an_update_must_change_something() -> None:
    with pytest.raises(ValidationError):
        subscription.UpdateSubscription(subscription_key="S-1")


# --- money --------------------------------------------------------------------------------


def test_money_is_a_string_in_envelopes() -> None:
    body = json.loads(new_envelope(REMINDER, website_key="shop-1", occurred_at=NOW).to_json())[
        "payload"
    ]["invoice"]

    assert body["amount_debit"] == "121.00"
    assert body["amount_paid"] == "0.00"


def test_money_may_arrive_as_a_json_number() -> None:
    parsed = parse_envelope(
        envelope_json("CreateInvoice", create_invoice_payload(amount_debit=121.5))
    )

    assert parsed.payload.amount_debit == D("121.5")


@given(
    st.decimals(
        min_value=-MAX_AMOUNT,
        max_value=MAX_AMOUNT,
        places=4,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_any_amount_with_at_most_four_decimals_round_trips_exactly(amount: Decimal) -> None:
    command = invoice.RegisterCollectedAmount(invoice_number="INV-1", amount=amount, case_key="C-1")

    parsed = parse_envelope(new_envelope(command, website_key="w", occurred_at=NOW).to_json())

    assert parsed.payload.amount == amount
    assert str(parsed.payload.amount) == str(amount)


@pytest.mark.parametrize(
    ("amount", "currency", "written"),
    [
        ("121", "EUR", "121.00"),
        ("121.5", "EUR", "121.50"),
        ("121.505", "EUR", "121.505"),
        ("1500", "JPY", "1500"),
        ("1.5", "KWD", "1.500"),
        ("-0", "EUR", "-0.00"),
    ],
)
def test_amounts_are_padded_to_the_currencys_minor_unit_never_rounded(
    amount: str, currency: str, written: str
) -> None:
    assert format(with_minor_unit(D(amount), currency), "f") == written


def test_minor_units() -> None:
    assert (minor_unit("EUR"), minor_unit("JPY"), minor_unit("BHD")) == (2, 0, 3)


# --- the push -----------------------------------------------------------------------------

#: The push's fields in Buckaroo's order (docs/asyncapi.json, InvoicePush).
CONTRACTS_EXAMPLE_KEYS = [
    "InvoiceKey",
    "InvoiceNumber",
    "WebsiteKey",
    "DebtorCode",
    "DebtorGuid",
    "SchemeKey",
    "IsTest",
    "Type",
    "Culture",
    "InvoiceDate",
    "DueDate",
    "InvoiceStatusCode",
    "PreviousStepIndex",
    "PreviousStepDateTime",
    "InvoicePayLink",
    "Event",
    "EventCategory",
    "EventDateTime",
    "EventSequence",
    "EventParameters",
    "Currency",
    "AmountDebit",
    "AmountCredit",
    "AmountAdminCosts",
    "AmountCreditNotes",
    "AmountPaid",
    "AmountAdminCostsPaid",
    "AmountPendingSlow",
    "OpenAmount",
    "OpenAmountAdminCosts",
    "OpenAmountInclAdminCosts",
    "IsPaid",
    "CustomParameters",
    "AdditionalParameters",
]


def reminder_push() -> tuple[bytes, dict[str, Any]]:
    envelope = parse_envelope(
        new_envelope(REMINDER, website_key="shop-1", occurred_at=NOW).to_json()
    )
    body = push_from_event(envelope).to_json()
    return body, json.loads(body, parse_float=Decimal)


def test_the_push_has_exactly_the_fields_of_the_contracts_example() -> None:
    _, push = reminder_push()

    assert list(push) == ["Invoice"]
    assert list(push["Invoice"]) == CONTRACTS_EXAMPLE_KEYS


def test_the_push_matches_the_contracts_example() -> None:
    body, push = reminder_push()
    invoice_push = push["Invoice"]

    assert invoice_push["InvoiceNumber"] == "INV-0001"
    assert invoice_push["InvoiceDate"] == "2026-11-01T00:00:00"
    assert invoice_push["DueDate"] == "2026-11-15T00:00:00"
    assert invoice_push["InvoiceStatusCode"] == 10
    assert invoice_push["PreviousStepIndex"] == 2
    assert invoice_push["PreviousStepDateTime"] == "2026-11-22T00:00:00+00:00"
    assert invoice_push["Event"] == "SentReminderMessage"
    assert invoice_push["EventCategory"] == "Other"
    assert invoice_push["EventDateTime"] == "2026-11-22T00:00:00+00:00"
    assert invoice_push["EventSequence"] == 3
    assert invoice_push["EventParameters"] == [{"Key": "StepIndex", "Value": "2"}]
    assert invoice_push["Type"] == "RegularInvoice"
    assert invoice_push["IsPaid"] is False
    assert invoice_push["CustomParameters"] == [{"Key": "order", "Value": "O-9"}]
    assert b'"AmountDebit":121.00,' in body
    assert b'"OpenAmountInclAdminCosts":121.00,' in body


def test_the_push_says_previous_step_0_before_any_step() -> None:
    """Buckaroo sends `"PreviousStepIndex": 0` before the first step, and merchants'
    parsers expect a number (docs/invoices.md, "PreviousStepIndex before any step")."""
    fresh = SNAPSHOT.model_copy(
        update={"previous_step_index": None, "previous_step_date_time": None}
    )
    event = invoice.InvoiceEvent.of(
        invoice.InvoiceEventName.CHANGED_STATUS,
        invoice=fresh,
        sequence=1,
        parameters={"StatusCode": "10"},
    )
    body = push_from_event(new_envelope(event, website_key="shop-1", occurred_at=NOW)).to_json()

    assert b'"PreviousStepIndex":0,' in body
    assert json.loads(body)["Invoice"]["PreviousStepDateTime"] is None
    # a push stored with null before this rule reads back as 0
    old = body.replace(b'"PreviousStepIndex":0,', b'"PreviousStepIndex":null,')
    assert InvoicePush.model_validate_json(old).invoice.previous_step_index == 0


def test_push_amounts_are_json_numbers_with_the_currencys_digits() -> None:
    body, push = reminder_push()
    amounts = {key: value for key, value in push["Invoice"].items() if "Amount" in key}

    assert len(amounts) == 10
    assert all(isinstance(value, Decimal) for value in amounts.values())
    assert b'"AmountPaid":0.00,' in body


def test_the_push_takes_event_time_from_the_envelope() -> None:
    later = datetime(2026, 12, 1, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    envelope = new_envelope(REMINDER, website_key="shop-1", occurred_at=later)

    push = json.loads(push_from_event(envelope).to_json())

    assert push["Invoice"]["EventDateTime"] == "2026-12-01T09:30:00+01:00"


def test_a_push_parses_back() -> None:
    body, _ = reminder_push()

    parsed = InvoicePush.model_validate_json(body)

    assert parsed.to_json() == body
    assert parsed.invoice.amount_debit == D("121.00")


def test_push_from_event_refuses_other_envelopes() -> None:
    with pytest.raises(TypeError):
        push_from_event(new_envelope(STEP_DUE, website_key="w", occurred_at=NOW))  # type: ignore[arg-type]


# --- invoice codes --------------------------------------------------------------------------


def test_invoice_event_codes_and_categories() -> None:
    assert len(invoice.INVOICE_EVENTS) == 12
    assert invoice.InvoiceEventCode(4).event_name == "SentReminderMessage"
    assert invoice.InvoiceEventCode(1).category == invoice.EventCategory.FINANCIAL_CHANGE
    custom = invoice.InvoiceEvent.of(
        invoice.InvoiceEventName.CUSTOM_EVENT,
        invoice=SNAPSHOT,
        sequence=1,
        parameters={"CustomEventMessage": "hi"},
    )
    assert (custom.event_code, custom.event_category) == (None, "Other")
    created = invoice.InvoiceEvent.of(
        invoice.InvoiceEventName.CHANGED_STATUS,
        invoice=SNAPSHOT,
        sequence=1,
        category=invoice.EventCategory.FINANCIAL_CHANGE,
    )
    assert (created.event_code, created.event_category) == (2, "FinancialChange")


def test_status_names() -> None:
    assert invoice.InvoiceStatus(22).display_name == "PausedByPaymentPlan"
    assert invoice.InvoiceStatus(74).display_name == "ProcessedByCollectionAgencyIncomplete"
    assert invoice.CollectionStatusCode(79).invoice_status is invoice.InvoiceStatus(79)


# --- catalog and AsyncAPI -------------------------------------------------------------------


def test_types_for_topic_covers_every_registered_type_once() -> None:
    per_topic = [catalog.types_for_topic(topic) for topic in ALL_TOPICS]
    carried = [name for names in per_topic for name in names]
    # The one type two writers send: merchants and agencies each on their own topic.
    carried.remove("AddCollectedAmount")

    assert sorted(carried) == sorted(contract_types())
    assert catalog.topics_of_type("AddCollectedAmount") == [
        "cm.collection.commands",
        "cm.agency.answers",
    ]
    assert catalog.types_for_topic(PUSH_INVOICE) == set()
    with pytest.raises(KeyError):
        catalog.types_for_topic("cm.nope")


def test_every_topic_is_in_the_catalog_and_every_producer_sends_what_it_carries() -> None:
    assert set(catalog.TOPICS) == set(ALL_TOPICS)
    for spec in catalog.TOPICS.values():
        for sent in spec.producers.values():
            assert set(sent) <= set(spec.messages)
        actors = set(spec.producers) | set(spec.consumers)
        assert actors <= set(catalog.RUNTIME_SERVICES) | set(catalog.EXTERNAL_ACTORS)


@pytest.mark.parametrize(
    ("sample", "key"),
    [
        (invoice.CreateInvoice(**INVOICE_FIELDS), "shop-1:INV-0001"),
        (sample_of("CreateCreditNote"), "shop-1:INV-0001"),  # the original's key
        (sample_of("AddOrUpdateDebtor"), "shop-1:debtor:D-2"),
        (sample_of("CreatePaymentPlan"), "shop-1:plan:PP-1"),
        (sample_of("UpsertScheme"), "shop-1:scheme:Mine"),
        (sample_of("UpdateMerchantSettings"), "shop-1:merchant"),
        (REMINDER, "shop-1:INV-0001"),
        (scheduler.Tick(as_of=NOW), "clock"),
        (scheduler.CancelTimer(timer_id="t-9"), "t-9"),
        (
            notifier.RegisterWebhook(url="https://x.example", secret=WEBHOOK_SECRET),
            "shop-1:webhook",
        ),
        (notifier.EnableKafkaPush(), "shop-1:kafka-push"),
        (notifier.DisableKafkaPush(), "shop-1:kafka-push"),
        (collection.MarkAsPrepared(case_key="C-1"), "shop-1:C-1"),
        (sample_of("TransferCase"), "AG-1:C-1"),
        (sample_of("DeadLetter"), "k"),  # the original key
        (sample_of("CommandAccepted"), "shop-1"),
    ],
    ids=lambda value: type(value).TYPE if isinstance(value, Message) else value,
)
def test_kafka_keys(sample: Message, key: str) -> None:
    assert catalog.key_for(new_envelope(sample, website_key="shop-1", occurred_at=NOW)) == key


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).TYPE)
def test_every_message_has_a_kafka_key(sample: Message) -> None:
    key = catalog.key_for(new_envelope(sample, website_key="shop-1", occurred_at=NOW))

    assert key
    assert "None" not in key
    assert catalog.key_for_payload(sample, "shop-1") == key  # what a handler names up front


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_asyncapi_document_names_every_topic_and_message() -> None:
    document = build()

    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(ALL_TOPICS)
    assert set(document["components"]["messages"]) == set(contract_types()) | {"InvoicePush"}
    actions = {(op["action"], op["tags"][0]["name"]) for op in document["operations"].values()}
    for service in catalog.SERVICES:
        assert ("send", service) in actions
    for service in set(catalog.SERVICES) - {"scheduler"}:
        assert ("receive", service) in actions
    assert ("receive", "scheduler") in actions


def test_every_reference_in_the_asyncapi_document_resolves() -> None:
    document = build()

    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        _resolve(document, ref)


def test_the_asyncapi_document_is_deterministic_json() -> None:
    text = render()

    assert text == render()
    assert json.loads(text)["info"]["title"] == "Credit management platform"
    push_schema = json.loads(text)["components"]["schemas"]["PushInvoice"]
    assert push_schema["properties"]["AmountDebit"]["type"] == "number"


@settings(max_examples=100, deadline=None)
@given(
    st.decimals(min_value=-100_000, max_value=100_000, places=2),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),  # storable text
    st.sampled_from(["EUR", "JPY", "KWD"]),
)
def test_the_fast_push_encoder_writes_what_the_reference_encoder_writes(
    amount: Decimal, text: str, currency: str
) -> None:
    snapshot = REMINDER.invoice.model_copy(
        update={
            "open_amount": amount,
            "amount_paid": abs(amount),
            "currency": currency,
            "description": text,
            "custom_parameters": [KeyValueSnapshot(key="AmountX", value=text)],
        }
    )
    event = REMINDER.model_copy(update={"invoice": snapshot})
    envelope = parse_envelope(new_envelope(event, website_key="shop-1", occurred_at=NOW).to_json())
    push = push_from_event(envelope)
    assert push.to_json() == encode_reference(push.model_dump(mode="python")).encode()
