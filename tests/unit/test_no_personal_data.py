"""Personal data in answers and logs (issue 11, trust boundaries).

- A command refused for a bad personal value (a name with a line break, an e-mail
  address a mail header cannot carry, a phone number too long, ...) is answered with
  errors that name the field and the rule, never the value.
- The scan behind the e2e suite's check (tests/support/pii.py, wired in
  tests/e2e/conftest.py) finds such values in log lines and answers: a service logging
  a debtor's e-mail address, or a CommandRejected echoing one, fails it.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from contracts import envelope
from contracts.envelope import FieldError, ParseError, parse_envelope
from contracts.scheduler import ScheduleTimer
from services.runtime.consumer import result_errors
from services.scheduler.handlers import _validate
from tests.support.pii import (
    Needles,
    Recorder,
    Text,
    answer_texts,
    is_personal,
    personal_values,
    redact,
    report,
    scan,
)

ROOT = Path(__file__).resolve().parents[2]

# --- refused personal values are not echoed -------------------------------------------------

NAME = "Xanthippe"
SURNAME = "Quirijnsen"
EMAIL = "xanthippe.quirijnsen@mailbox.test"
MOBILE = "+31612345678"
STREET = "Zwaluwstraat"
CITY = "Kruiningen"


def _example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((ROOT / "examples" / name).read_text())
    body["message_id"] = str(uuid.uuid4())
    return body


def _debtor() -> dict[str, Any]:
    return {
        "code": "D-1",
        "person": {"first_name": NAME, "last_name": SURNAME, "culture": "nl-NL"},
        "email": EMAIL,
        "phone": {"mobile": MOBILE, "landline": "+31301234567"},
        "address": {
            "street": STREET,
            "house_number": "12",
            "postal_code": "4416 AB",
            "city": CITY,
            "country": "NL",
        },
    }


def _envelope(type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "type": type_,
        "website_key": "shop-1",
        "occurred_at": "2026-11-01T09:00:00+00:00",
        "payload": payload,
    }


def _create_invoice() -> dict[str, Any]:
    body = _example("create-invoice.json")
    body["payload"]["debtor"] = _debtor()
    return body


def _create_subscription() -> dict[str, Any]:
    body = _example("create-subscription.json")
    body["payload"]["debtor"] = _debtor()
    return body


def _add_or_update_debtor() -> dict[str, Any]:
    return _envelope("AddOrUpdateDebtor", {"debtor": _debtor()})


def _create_payment_plan() -> dict[str, Any]:
    return _envelope(
        "CreatePaymentPlan",
        {
            "dossier_number": "PLAN-1",
            "included_invoice_numbers": ["INV-0001"],
            "installment_count": 3,
            "initial_amount": "40.00",
            "start_date": "2026-12-01",
            "interval": "month",
            "recipient_email": EMAIL,
            "scheme_key": "DefaultCM1",
        },
    )


def _create_case() -> dict[str, Any]:
    return _envelope(
        "CreateCase",
        {
            "case_key": "CASE-1",
            "external_id": "EXT-1",
            "billing_address": {
                "name": f"{NAME} {SURNAME}",
                "given_name": NAME,
                "family_name": SURNAME,
                "mobile_phone": MOBILE,
                "street": STREET,
                "house_number": "12",
                "postal_code": "4416 AB",
                "city": CITY,
                "country": "NL",
                "email": EMAIL,
            },
            "line_items": [
                {
                    "description": "Order 1",
                    "quantity": "1",
                    "unit_price": "100",
                    "vat_percentage": "21",
                }
            ],
            "currency": "EUR",
            "due_date": "2026-11-15",
            "amount": "121.00",
        },
    )


def _schedule_timer() -> dict[str, Any]:
    """A timer whose message is a CreateInvoice (the scheduler stores it as it is)."""
    return _envelope(
        "ScheduleTimer",
        {
            "timer_id": "t-1",
            "due_at": "2026-11-02T09:00:00+00:00",
            "topic": "cm.invoice.commands",
            "key": "shop-1:INV-0001",
            "message": {k: v for k, v in _create_invoice().items() if k != "occurred_at"}
            | {"occurred_at": "2026-11-02T09:00:00+00:00"},
        },
    )


BUILDERS = {
    "CreateInvoice": (_create_invoice, "payload.debtor"),
    "CreateSubscription": (_create_subscription, "payload.debtor"),
    "AddOrUpdateDebtor": (_add_or_update_debtor, "payload.debtor"),
    "CreatePaymentPlan": (_create_payment_plan, "payload"),
    "CreateCase": (_create_case, "payload.billing_address"),
    "ScheduleTimer": (_schedule_timer, "payload.message.payload.debtor"),
}

_LONG = f"{SURNAME} " * 30

#: (field under the builder's block, a bad value): every rule a personal field has.
BAD_DEBTOR_VALUES: list[tuple[str, Any]] = [
    ("person.first_name", f"{NAME}\n{SURNAME}"),  # control character
    ("person.first_name", f"{NAME}\x00{SURNAME}"),  # NUL (cannot be stored)
    ("person.first_name", f"{NAME}\ud800{SURNAME}"),  # lone surrogate
    ("person.last_name", _LONG),  # too long
    ("person.last_name", {"family": SURNAME}),  # not a string
    ("email", f"{NAME} {SURNAME}@mailbox.test"),  # whitespace: the pattern
    ("email", f"{NAME}({SURNAME})@mailbox.test"),  # a comment: not for a mail header
    ("email", f"{NAME}@@{SURNAME}.test"),
    ("email", f"{NAME}.{SURNAME}@mailbox.test\r\nBcc: x@y.test"),
    ("email", f"{NAME.lower() * 30}@{SURNAME.lower()}.test"),  # too long
    ("email", [EMAIL]),
    ("phone.mobile", f"{MOBILE}{MOBILE}{MOBILE}"),  # too long
    ("phone.mobile", f"{MOBILE}\t{SURNAME}"),
    ("phone.landline", f"{MOBILE}\x00"),
    ("address.street", f"{STREET}\n{CITY}"),
    ("address.street", _LONG),
    ("address.city", f"{CITY}\x00"),
    ("address.postal_code", f"4416 AB {SURNAME} {SURNAME}"),  # too long
    ("address.country", CITY),  # not a country code
    ("company", {"name": f"{SURNAME} B.V."}),  # a person and a company
]
BAD_BILLING_VALUES: list[tuple[str, Any]] = [
    ("name", f"{NAME}\n{SURNAME}"),
    ("name", _LONG * 2),
    ("given_name", f"{NAME}\x00"),
    ("family_name", _LONG),
    ("mobile_phone", f"{MOBILE}{MOBILE}{MOBILE}"),
    ("street", f"{STREET}\u2028"),
    ("city", _LONG),
    ("postal_code", f"4416 AB {SURNAME} {SURNAME}"),
    ("email", f"{NAME}({SURNAME})@mailbox.test"),
    ("email", f"{NAME}@@{SURNAME}.test"),
]
BAD_PLAN_VALUES: list[tuple[str, Any]] = [
    ("recipient_email", f"{NAME}({SURNAME})@mailbox.test"),
    ("recipient_email", f"{NAME} {SURNAME}@mailbox.test"),
    ("recipient_email", f"{NAME.lower() * 30}@{SURNAME.lower()}.test"),
]


def _cases() -> Iterator[Any]:
    for type_, (_, block) in BUILDERS.items():
        if block.endswith("debtor"):
            bad = BAD_DEBTOR_VALUES
        elif block.endswith("billing_address"):
            bad = BAD_BILLING_VALUES
        else:
            bad = BAD_PLAN_VALUES
        for field, value in bad:
            yield pytest.param(
                type_, field, value, id=f"{type_}-{field}-{bad.index((field, value))}"
            )


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    node[last] = value


def _words(value: Any) -> set[str]:
    """The parts of a value that would give it away (`Xanthippe`, `mailbox`, ...)."""
    text = json.dumps(value, ensure_ascii=False)
    return {w.casefold() for w in re.findall(r"[^\W_]{5,}", text)} | {
        w.casefold() for w in re.findall(r"\+?\d{6,}", text)
    }


def _refusals(body: dict[str, Any]) -> list[FieldError]:
    """The errors a CommandRejected would carry; a timer's message is checked by the
    scheduler when the timer is scheduled (services.scheduler.handlers._validate)."""
    try:
        envelope = parse_envelope(json.dumps(body).encode())
    except ParseError as refused:
        return refused.errors
    assert isinstance(envelope.payload, ScheduleTimer), "the bad value must be refused"
    return _validate(SimpleNamespace(website_key=envelope.website_key), envelope.payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("type_", sorted(BUILDERS))
def test_the_personal_data_of_every_builder_parses(type_: str) -> None:
    build, _ = BUILDERS[type_]
    assert parse_envelope(json.dumps(build()).encode()).type == type_


@pytest.mark.parametrize(("type_", "field", "value"), list(_cases()))
def test_a_refused_personal_value_is_not_echoed(type_: str, field: str, value: Any) -> None:
    build, block = BUILDERS[type_]
    body = build()
    _set(body, f"{block}.{field}", value)
    errors = _refusals(body)
    assert errors, "the bad value must be refused"
    wire = json.dumps(
        [e.model_dump() for e in result_errors(errors)], ensure_ascii=False
    ).casefold()
    for word in _words(value):
        assert word not in wire, f"{word!r} of the refused value is in the answer: {wire}"
    assert not re.search(r"\binput_value\b|\binput\b=", wire)


def test_a_nested_timer_message_with_a_nul_in_a_name_names_the_path_only() -> None:
    body = _schedule_timer()
    body["payload"]["message"]["payload"]["debtor"]["person"]["first_name"] = f"{NAME}\x00"
    errors = _refusals(body)
    text = json.dumps([e.__dict__ for e in errors]).casefold()
    assert "payload.debtor.person.first_name" in text
    assert NAME.casefold() not in text


def test_the_contracts_personal_fields_are_what_the_scan_looks_for() -> None:
    """tests/support/pii.py decides by field name; every personal field of the
    contracts is one of them (a new `iban` or `*_email` field is by its name)."""
    personal = {
        path
        for builder, _ in BUILDERS.values()
        for path, _ in personal_values(builder()["payload"])
    }
    for expected in (
        "debtor.person.first_name",
        "debtor.person.last_name",
        "debtor.email",
        "debtor.phone.mobile",
        "debtor.phone.landline",
        "debtor.address.street",
        "debtor.address.postal_code",
        "debtor.address.city",
        "billing_address.name",
        "billing_address.given_name",
        "billing_address.family_name",
        "billing_address.mobile_phone",
        "billing_address.email",
        "recipient_email",
        "message.payload.debtor.email",
    ):
        assert expected in personal
    last = {p.rsplit(".", 1)[-1] for p in personal}
    assert not last & {"code", "country", "culture", "house_number", "invoice_number"}
    assert is_personal("iban", "transaction") and is_personal("AccountIBAN", None)
    assert is_personal("name", "company") and not is_personal("name", "scheme")
    assert is_personal("DebtorEmail", None) and is_personal("FirstName", "Person")


# --- the scan --------------------------------------------------------------------------------


def _needles() -> Needles:
    needles = Needles()
    needles.add_from(_create_invoice(), "a test's CreateInvoice")
    needles.add_from({"debtor": {"person": {"first_name": "Jan"}}}, "another")
    needles.add_from({"debtor": {"email": "müller@example.de"}}, "another")
    return needles


def test_the_scan_finds_a_value_as_written_escaped_or_in_other_case() -> None:
    needles = _needles()
    assert needles.find(f'{{"email": "{EMAIL}"}}') == [EMAIL]
    assert needles.find(f"to {EMAIL.upper()}: sent") == [EMAIL]
    assert needles.find(json.dumps({"to": "müller@example.de"})) == ["müller@example.de"]
    assert needles.find(repr({"name": f"{NAME} {SURNAME}"})) == [NAME, SURNAME]
    assert needles.find("Jan Jansen") == ["Jan"]


def test_the_scan_does_not_find_a_value_inside_a_longer_word() -> None:
    needles = _needles()
    assert needles.find("2027-01-06 January Jansens Jan2 xJan") == []
    assert needles.find("INV-0001 EUR 121.00 status 70 D-1 NL nl-NL") == []


def test_a_report_names_where_but_never_the_value() -> None:
    needles = _needles()
    texts = [Text("a log line of services.invoice.handlers", "test_x", f"to {EMAIL} and {CITY}")]
    findings = scan(texts, needles)
    assert [f.value for f in findings] == [EMAIL, CITY]
    shown = report(findings, "summary")
    assert EMAIL not in shown and CITY not in shown
    assert redact(EMAIL) in shown and "test_x" in shown and "services.invoice.handlers" in shown


def test_the_scan_reads_the_errors_of_rejections_only() -> None:
    rejected = _envelope(
        "CommandRejected",
        {
            "command_type": "CreateInvoice",
            "command_id": str(uuid.uuid4()),
            "errors": [{"field": "payload.debtor.email", "code": "x", "message": f"bad {EMAIL}"}],
        },
    )
    dead = _envelope(
        "DeadLetter",
        {"raw_value": json.dumps(_create_invoice()), "error": f"KeyError: {EMAIL}", "errors": []},
    )
    event = _envelope("InvoiceEvent", {"invoice": {"debtor": _debtor()}})
    records = [("p.cm.command.results", json.dumps(b).encode()) for b in (rejected, dead, event)]
    records += [("p.cm.dlq", b"[" * 100_000), ("p.cm.dlq", b"\xff not json")]  # hostile bodies
    texts = answer_texts(records, lambda topic: "test_x")
    assert [t.where for t in texts] == ["a CommandRejected on p.cm.command.results"]
    assert [f.value for f in scan(texts, _needles())] == [EMAIL]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
        structlog.contextvars.clear_contextvars()


def test_a_service_logging_a_debtor_e_mail_is_found_even_below_its_level(
    restored_logging: None,
) -> None:
    """What the e2e check does, on a service's real logging set-up: the service logs at
    WARNING, and an INFO line with the e-mail address, an exception text with a name
    and a stdlib line are still captured and found."""
    import services.runtime.app as app  # noqa: PLC0415

    recorder = Recorder(test="tests/e2e/test_x.py::test_y")
    recorder.install()
    try:
        app.configure_logging("invoice", fmt="json", level="WARNING")  # type: ignore[attr-defined]
        log = structlog.get_logger("services.invoice.handlers")
        log.info("debtor updated", email=EMAIL)
        try:
            raise KeyError(f"{NAME} {SURNAME}")
        except KeyError:
            log.exception("handler failed")
        logging.getLogger("services.invoice.other").debug("city %s", CITY)
        logging.getLogger("mail.log").info("test infrastructure: %s", EMAIL)
    finally:
        recorder.uninstall()
    findings = scan(recorder.lines, _needles())
    assert sorted({f.value for f in findings}) == sorted([EMAIL, NAME, SURNAME, CITY])
    assert {f.test for f in findings} == {"tests/e2e/test_x.py::test_y"}
    assert all("mail.log" not in f.where for f in findings)
    # The service's own handler kept its level: the INFO line did not reach its output.
    assert logging.getLogger().handlers[0].level == logging.WARNING


def test_a_line_is_scanned_as_the_service_writes_it(restored_logging: None) -> None:
    """The service's own rendering is scanned too (a console traceback that printed
    frame locals put message bodies in the log; JSON alone would not show that)."""
    import services.runtime.app as app  # noqa: PLC0415

    recorder = Recorder()
    recorder.install()
    try:
        app.configure_logging("invoice", fmt="console", level="WARNING")  # type: ignore[attr-defined]
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            structlog.get_logger("services.invoice.handlers").exception("handler failed")
    finally:
        recorder.uninstall()
    [line] = recorder.lines
    console, as_json = line.text.split("\n{", 1)
    assert "[error" in console and "Traceback (most recent call last)" in console
    assert json.loads("{" + as_json)["event"] == "handler failed"


def test_the_examples_personal_data_is_looked_for() -> None:
    """`make run`'s test publishes the examples: their values are in the scan too."""
    needles = Needles()
    for path in sorted((ROOT / "examples").glob("*.json")):
        needles.add_from(json.loads(path.read_text()), path.name)
    assert {"jan@example.test", "Jansen", "Dorpsstraat", "Utrecht"} <= set(needles.origins)
    assert copy.deepcopy(needles).find("mail to jan@example.test") == ["jan@example.test"]


def test_an_unknown_type_that_is_not_a_type_name_is_not_repeated() -> None:
    body = (
        '{"message_id": "00000000-0000-0000-0000-000000000001", '
        '"type": "xanthippe@mailbox.test", "website_key": "shop-1", '
        '"occurred_at": "2026-11-01T09:00:00+00:00", "payload": {}}'
    )
    try:
        envelope.parse_envelope(body)
    except envelope.ParseError as error:
        assert "xanthippe" not in str(error)
        assert [e.code for e in error.errors] == ["unknown_type"]
    else:
        raise AssertionError("an unknown type parsed")
