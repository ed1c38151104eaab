"""Message templates: Buckaroo-style bracket tags, checked when saved, filled in by plain
substitution (pure: no I/O).

A template is text with tags such as `[InvoiceNumber]` or `[OpenAmount]`. The tags form
a fixed table; filling one in is a dictionary lookup and one regex pass over the text
(contracts/tags.py), so a merchant's template can never run code, and a value that
itself looks like a tag is not expanded again. Amounts and dates are written per culture with Babel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from babel.core import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency

from contracts import tags
from contracts.envelope import FieldError
from contracts.fields import minor_unit
from contracts.invoice import Channel, InvoiceSnapshot, StepAction
from contracts.statutory import applies_to, statutory_costs

#: Syntax of template engines; refused so nobody mistakes a template for code.
ENGINE_SYNTAX = re.compile(r"\{\{|\{%|\$\{|<%|#\{")

#: The culture used when a template exists neither in the invoice's culture nor in a
#: culture of the same language.
FALLBACK_CULTURE = "en-US"

#: The Dutch statutory 14-day term (art. 6:96 lid 6 BW) the 14-day letter states.
STATUTORY_TERM_DAYS = 14

# --- formatting ----------------------------------------------------------------------------


def babel_locale(culture: str | None) -> Locale:
    try:
        return Locale.parse((culture or FALLBACK_CULTURE).replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return Locale.parse(FALLBACK_CULTURE.replace("-", "_"))


def _plain_spaces(text: str) -> str:
    # CLDR puts (narrow) no-break spaces in amounts; plain text and PDF core fonts want
    # ordinary ones (`€ 1.234,56`).
    return text.replace("\u00a0", " ").replace("\u202f", " ")


def money(amount: Decimal, currency: str, culture: str | None) -> str:
    """`€ 1.234,56` in nl-NL, `€1,234.56` in en-US."""
    return _plain_spaces(format_currency(amount, currency, locale=babel_locale(culture)))


def day(value: date, culture: str | None) -> str:
    """`15 november 2026` in nl-NL, `November 15, 2026` in en-US."""
    return _plain_spaces(format_date(value, "long", locale=babel_locale(culture)))


# --- the tag table -------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageContext:
    """What a message is about: the invoice as of the step, and when it is sent."""

    invoice: InvoiceSnapshot
    culture: str
    sent_at: datetime
    merchant_name: str


def _debtor_name(ctx: MessageContext) -> str:
    debtor = ctx.invoice.debtor
    if debtor is None:
        return ""
    if debtor.person is not None:
        return f"{debtor.person.first_name} {debtor.person.last_name}"
    return debtor.company.name if debtor.company is not None else ""


def _amount(field: str) -> Callable[[MessageContext], str]:
    def render(ctx: MessageContext) -> str:
        value: Decimal = getattr(ctx.invoice, field)
        return money(value, ctx.invoice.currency, ctx.culture)

    return render


def _lines(ctx: MessageContext) -> str:
    inv = ctx.invoice
    rows = []
    for line in inv.lines:
        total = (line.quantity * line.unit_price * (1 + line.vat_percentage / 100)).quantize(
            Decimal(1).scaleb(-minor_unit(inv.currency)), rounding=ROUND_HALF_EVEN
        )
        rows.append(
            f"{line.quantity.normalize():f} x {line.description}: "
            f"{money(total, inv.currency, ctx.culture)}"
        )
    return "\n".join(rows)


def _statutory(ctx: MessageContext) -> Decimal:
    """What the statutory step charges: the scale on an EUR invoice, else 0."""
    if not applies_to(ctx.invoice.currency):
        return Decimal(0)
    return statutory_costs(max(Decimal(0), ctx.invoice.open_amount), ctx.invoice.currency)


def _custom(name: str) -> Callable[[MessageContext], str]:
    def render(ctx: MessageContext) -> str:
        for param in ctx.invoice.custom_parameters:
            if param.key == name:
                return param.value
        return ""

    return render


#: Every tag a template may use, and how it is filled in.
TAGS: dict[str, Callable[[MessageContext], str]] = {
    "DebtorName": _debtor_name,
    "DebtorCode": lambda c: c.invoice.debtor_code or "",
    "CompanyName": lambda c: c.merchant_name,
    "InvoiceNumber": lambda c: c.invoice.invoice_number,
    "InvoiceDescription": lambda c: c.invoice.description or "",
    "InvoiceDate": lambda c: day(c.invoice.invoice_date, c.culture),
    "DueDate": lambda c: day(c.invoice.due_date, c.culture),
    "MessageDate": lambda c: day(c.sent_at.date(), c.culture),
    "Currency": lambda c: c.invoice.currency,
    "AmountDebit": _amount("amount_debit"),
    "AmountPaid": _amount("amount_paid"),
    "AmountCreditNotes": _amount("amount_credit_notes"),
    "AmountAdminCosts": _amount("amount_admin_costs"),
    "OpenAmount": _amount("open_amount"),
    "OpenAmountAdminCosts": _amount("open_amount_admin_costs"),
    "OpenAmountInclAdminCosts": _amount("open_amount_incl_admin_costs"),
    "StatutoryCosts": lambda c: money(_statutory(c), c.invoice.currency, c.culture),
    "OpenAmountInclStatutoryCosts": lambda c: money(
        c.invoice.open_amount_incl_admin_costs + _statutory(c), c.invoice.currency, c.culture
    ),
    "StatutoryTermDays": lambda c: str(STATUTORY_TERM_DAYS),
    # Statutory interest (docs/interest.md): accrued up to the message's step, and the
    # open amount with what of it no interest step has added to the costs yet.
    "InterestAccrued": _amount("interest_accrued"),
    "OpenAmountInclInterest": lambda c: money(
        c.invoice.open_amount_incl_admin_costs
        + max(Decimal(0), c.invoice.interest_accrued - c.invoice.interest_booked),
        c.invoice.currency,
        c.culture,
    ),
    "PayLink": lambda c: c.invoice.pay_link or "",
    "InvoiceLinesRegularWithCurrencySymbol": _lines,
    "CustomerReference": _custom("CustomerReference"),
}

#: A tag's function by its name, in any case or as an alias (contracts/tags.py).
find_tag = tags.lookup(TAGS)


def template_errors(field: str, text: str | None) -> list[FieldError]:
    """Why a template text cannot be saved: unknown tags, template-engine syntax."""
    if not text:
        return []
    errors = []
    if ENGINE_SYNTAX.search(text):
        errors.append(
            FieldError(
                field,
                "template_syntax",
                "templates take [Tag] placeholders only; {{ }}, {% %}, ${ } and the like "
                "are not allowed",
            )
        )
    unknown = sorted(name for name in tags.names(text) if find_tag(name) is None)
    if unknown:
        errors.append(
            FieldError(field, "unknown_tag", f"unknown tags: {', '.join(unknown)}; see TAGS")
        )
    return errors


def fill(text: str, ctx: MessageContext) -> str:
    """Replace every known tag in one pass (values are never scanned again)."""

    def value_of(name: str) -> str | None:
        function = find_tag(name)
        return None if function is None else function(ctx)

    return tags.fill(text, value_of)


# --- built-in templates --------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    subject: str | None
    body: str


_NL_SIGNATURE = "\n\nMet vriendelijke groet,\n[CompanyName]"
_EN_SIGNATURE = "\n\nKind regards,\n[CompanyName]"

_NL_TEXTS: dict[str, tuple[str, str, str]] = {
    # key: (subject, body, sms)
    "payment_invitation": (
        "Factuur [InvoiceNumber]",
        "Beste [DebtorName],\n\n"
        "Hierbij ontvangt u factuur [InvoiceNumber] van [InvoiceDate] voor een bedrag van "
        "[AmountDebit]. Wij verzoeken u dit bedrag uiterlijk [DueDate] te betalen.\n\n"
        "[InvoiceLinesRegularWithCurrencySymbol]\n\n"
        "Betalen kan via [PayLink]" + _NL_SIGNATURE,
        "Factuur [InvoiceNumber]: [OpenAmount], te betalen voor [DueDate]: [PayLink]",
    ),
    "reminder_1": (
        "Herinnering factuur [InvoiceNumber]",
        "Beste [DebtorName],\n\n"
        "Volgens onze administratie staat factuur [InvoiceNumber] van [InvoiceDate] nog "
        "open. De vervaldatum was [DueDate]. Het openstaande bedrag is "
        "[OpenAmountInclAdminCosts].\n\n"
        "Wilt u dit bedrag zo snel mogelijk betalen via [PayLink]? Heeft u al betaald, "
        "dan kunt u deze herinnering als niet verzonden beschouwen." + _NL_SIGNATURE,
        "Herinnering: factuur [InvoiceNumber] staat open, [OpenAmountInclAdminCosts]. "
        "Betaal via [PayLink]",
    ),
    "reminder_2": (
        "Laatste herinnering factuur [InvoiceNumber] (veertiendagenbrief)",
        "Beste [DebtorName],\n\n"
        "Ondanks onze eerdere herinnering staat factuur [InvoiceNumber] van [InvoiceDate] "
        "nog open. Het openstaande bedrag is [OpenAmountInclAdminCosts].\n\n"
        "Wij geven u de gelegenheid dit bedrag binnen [StatutoryTermDays] dagen na de dag "
        "van ontvangst van deze brief te betalen via [PayLink]. Betaalt u niet binnen deze "
        "termijn, dan zijn wij genoodzaakt incassokosten in rekening te brengen. Deze "
        "bedragen volgens de wettelijke staffel [StatutoryCosts], waarmee het totaal "
        "[OpenAmountInclStatutoryCosts] wordt." + _NL_SIGNATURE,
        "Laatste herinnering factuur [InvoiceNumber]: betaal [OpenAmountInclAdminCosts] "
        "binnen [StatutoryTermDays] dagen via [PayLink], anders volgen incassokosten "
        "van [StatutoryCosts].",
    ),
}

_EN_TEXTS: dict[str, tuple[str, str, str]] = {
    "payment_invitation": (
        "Invoice [InvoiceNumber]",
        "Dear [DebtorName],\n\n"
        "Please find invoice [InvoiceNumber] of [InvoiceDate] for an amount of "
        "[AmountDebit]. Please pay by [DueDate].\n\n"
        "[InvoiceLinesRegularWithCurrencySymbol]\n\n"
        "You can pay at [PayLink]" + _EN_SIGNATURE,
        "Invoice [InvoiceNumber]: [OpenAmount], due [DueDate]: [PayLink]",
    ),
    "reminder_1": (
        "Reminder: invoice [InvoiceNumber]",
        "Dear [DebtorName],\n\n"
        "According to our records invoice [InvoiceNumber] of [InvoiceDate] is still "
        "unpaid. It was due on [DueDate]. The amount open is [OpenAmountInclAdminCosts].\n\n"
        "Please pay as soon as possible at [PayLink]. If you have already paid, please "
        "disregard this reminder." + _EN_SIGNATURE,
        "Reminder: invoice [InvoiceNumber] is unpaid, [OpenAmountInclAdminCosts]. Pay at [PayLink]",
    ),
    "reminder_2": (
        "Final reminder: invoice [InvoiceNumber] (14-day notice)",
        "Dear [DebtorName],\n\n"
        "Despite our earlier reminder, invoice [InvoiceNumber] of [InvoiceDate] is still "
        "unpaid. The amount open is [OpenAmountInclAdminCosts].\n\n"
        "You have [StatutoryTermDays] days from the day after you receive this letter to "
        "pay at [PayLink]. If you do not pay within this term, collection costs will be "
        "charged. Under the Dutch statutory scale these amount to [StatutoryCosts], "
        "bringing the total to [OpenAmountInclStatutoryCosts]." + _EN_SIGNATURE,
        "Final reminder, invoice [InvoiceNumber]: pay [OpenAmountInclAdminCosts] within "
        "[StatutoryTermDays] days at [PayLink] or collection costs of [StatutoryCosts] "
        "follow.",
    ),
}


def _built_ins() -> dict[tuple[str, str, Channel], Template]:
    table: dict[tuple[str, str, Channel], Template] = {}
    for culture, texts in (("nl-NL", _NL_TEXTS), ("en-US", _EN_TEXTS)):
        for key, (subject, body, sms) in texts.items():
            table[key, culture, Channel.EMAIL] = Template(subject, body)
            table[key, culture, Channel.LETTER] = Template(subject, body)
            table[key, culture, Channel.SMS] = Template(None, sms)
    return table


#: The platform's own templates: (template_key, culture, channel) → text.
BUILT_IN: dict[tuple[str, str, Channel], Template] = _built_ins()
BUILT_IN_CULTURES: tuple[str, ...] = ("nl-NL", "en-US")


def default_template_key(action: StepAction, states_costs: bool) -> str:
    """The built-in template for a step that names none."""
    if action == StepAction.PAYMENT_INVITATION:
        return "payment_invitation"
    return "reminder_2" if states_costs else "reminder_1"


def cultures_to_try(culture: str | None) -> list[str]:
    """The invoice's culture, then built-in cultures of its language, then the fallback."""
    wanted = culture or FALLBACK_CULTURE
    language = wanted.split("-")[0].lower()
    same_language = [c for c in BUILT_IN_CULTURES if c.split("-")[0].lower() == language]
    return list(dict.fromkeys([wanted, *same_language, FALLBACK_CULTURE]))
