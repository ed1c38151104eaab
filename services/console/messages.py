"""Message templates in the console: the form, checked as the notifier checks it
(`services/notifier/templates.template_errors`: known tags only, no template-engine
syntax), and a preview filled in by the notifier's own `fill` from one of the merchant's
invoices (its last snapshot; a sample debtor, since the console keeps no personal
data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from contracts.debtor import DebtorSnapshot
from contracts.envelope import field_errors
from contracts.invoice import Channel, InvoiceSnapshot
from contracts.notifier import UpsertTemplate
from services.notifier.templates import MessageContext, fill, template_errors

CHANNELS = [c.value for c in Channel]
#: The debtor of every preview (fictional).
SAMPLE_DEBTOR = DebtorSnapshot.model_validate(
    {"code": "SAMPLE", "person": {"first_name": "Sam", "last_name": "Sample"}}
)


@dataclass
class TemplateForm:
    template_key: str = ""
    culture: str = ""
    channel: str = "email"
    subject: str = ""
    body: str = ""


def read_form(data: Any) -> TemplateForm:
    def text(name: str) -> str:
        value = data.get(name)
        return value if isinstance(value, str) else ""

    return TemplateForm(
        template_key=text("template_key").strip(),
        culture=text("culture").strip(),
        channel=text("channel").strip(),
        subject=text("subject").strip(),
        body=text("body").replace("\r\n", "\n"),
    )


def form_of(payload: dict[str, Any]) -> TemplateForm:
    return TemplateForm(
        template_key=str(payload.get("template_key") or ""),
        culture=str(payload.get("culture") or ""),
        channel=str(payload.get("channel") or "email"),
        subject=str(payload.get("subject") or ""),
        body=str(payload.get("body") or ""),
    )


def validate(form: TemplateForm) -> tuple[UpsertTemplate | None, list[dict[str, str]]]:
    values: dict[str, Any] = {
        "template_key": form.template_key,
        "culture": form.culture,
        "channel": form.channel,
        "body": form.body,
    }
    if form.subject:
        values["subject"] = form.subject
    try:
        payload = UpsertTemplate.model_validate(values)
    except ValidationError as exc:
        return None, [_shown(e.field, e.code, e.message) for e in field_errors(exc, "payload")]
    errors = [
        *template_errors("payload.subject", payload.subject),
        *template_errors("payload.body", payload.body),
    ]
    if errors:
        return None, [_shown(e.field, e.code, e.message) for e in errors]
    return payload, []


def _shown(field: str, code: str, message: str) -> dict[str, str]:
    name = field.removeprefix("payload.")
    return {"field": name, "label": name.replace("_", " "), "code": code, "message": message}


def preview(
    form: TemplateForm, snapshot: dict[str, Any] | None, merchant_name: str
) -> tuple[str, str] | None:
    """(subject, body) filled in from the invoice `snapshot`, or None without one."""
    if snapshot is None:
        return None
    invoice = InvoiceSnapshot.model_validate({**snapshot, "debtor": SAMPLE_DEBTOR.model_dump()})
    ctx = MessageContext(
        invoice=invoice,
        culture=form.culture or invoice.culture or "nl-NL",
        sent_at=datetime.now(UTC),
        merchant_name=merchant_name,
    )
    return fill(form.subject, ctx), fill(form.body, ctx)
