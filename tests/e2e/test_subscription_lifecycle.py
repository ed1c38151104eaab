"""A monthly advance subscription played out day by day on the manual clock for four
months, on the real broker and PostgreSQL: the subscription, invoice, scheduler and
notifier services in-process (e-mails to a local SMTP server, pushes on cm.push.invoice).

The merchant's scheme is DefaultCM1 with one step added, as a merchant selling a service
would do it: once the 14-day letter's term has run out unpaid (due + 35), stop
delivering (StopSubscription); the statutory costs (due + 38) and the hand-over to the
collection agency (due + 52) follow as in DefaultCM1.

Subscription SUB-A starts on 2026-01-31, so its periods exercise month-end clamping
(Jan 31, Feb 28, Mar 31, Apr 30, May 31, Jun 30), 14 days to pay, with two plans:
HOSTING 2 x 19.99 at 21% VAT from the start and MAGAZINE 1 x 12.50 at 9% VAT from
Feb 14 (prorated in period 1). Invoice 1 is paid before it is due, invoice 2 after its
reminder; on Mar 10 (period 2) the hosting price goes up to 24.99, from period 3 (the
first unbilled one); invoice 3 is never paid: its scheme stops the subscription on
May 19, inside period 4, whose unused days are credited. The clock goes on to Jun 30:
periods 5 and 6 are never billed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts import topics
from tests.support.invoices import debtor
from tests.support.kafka import (
    TopicWatcher,
    at_least,
    poll_until,
    read_all,
)
from tests.support.notifier import SmtpSink
from tests.support.platform import Platform, mailing_services
from tests.support.subscriptions import Subscriptions

KEY = "SUB-A"
SCHEME = "CM1StopSubscription"
D = Decimal

#: DefaultCM1 (services/invoice/migrations/001_invoices.sql) plus step 4: stop the
#: subscription when the 14 days of the letter (step 3, due + 21) have passed unpaid.
SCHEME_STEPS: list[dict[str, Any]] = [
    {"index": 1, "action": "PaymentInvitation", "days": 0, "channels": ["email"]},
    {"index": 2, "action": "Reminder", "days": 7, "channels": ["email", "letter"]},
    {
        "index": 3,
        "action": "Reminder",
        "days": 21,
        "channels": ["email", "letter"],
        "states_costs": True,
    },
    {"index": 4, "action": "StopSubscription", "days": 35},
    {"index": 5, "action": "AdminCostIncrease", "days": 38, "admin_cost": "statutory"},
    {"index": 6, "action": "TransferToCollectionAgency", "days": 52},
]


def plans() -> list[dict[str, Any]]:
    return [
        {
            "product_code": "HOSTING",
            "description": "Web hosting",
            "unit_price": "19.99",
            "quantity": "2",
            "vat_percentage": "21",
            "start_date": "2026-01-31",
        },
        {
            "product_code": "MAGAZINE",
            "description": "Monthly magazine",
            "unit_price": "12.50",
            "vat_percentage": "9",
            "start_date": "2026-02-14",
        },
    ]


class Lifecycle:
    """The platform plus what a merchant watches: subscription events, invoice pushes,
    the commands sent to the scheduler, and the debtor's mailbox."""

    def __init__(self, cm: Platform, smtp: SmtpSink) -> None:
        self.cm = cm
        self.smtp = smtp
        self.website_key = cm.invoices.website_key
        self.subscriptions = Subscriptions(cm)  # the same merchant's subscription commands
        self.watcher = TopicWatcher(
            cm.bootstrap,
            cm.prefix + topics.SUBSCRIPTION_EVENTS,
            cm.prefix + topics.PUSH_INVOICE,
            cm.prefix + topics.SCHEDULER_COMMANDS,
        )

    async def subscription_command(self, type_: str, payload: dict[str, Any], at: str) -> str:
        return await self.subscriptions.command(type_, payload, occurred_at=at)

    async def accepted(self, command_id: str) -> dict[str, Any]:
        answer = await self.cm.invoices.answer(command_id)
        assert answer["type"] == "CommandAccepted", answer
        return answer

    def subscription_events(self) -> list[dict[str, Any]]:
        return self.watcher.payloads(
            self.cm.prefix + topics.SUBSCRIPTION_EVENTS, f"{self.website_key}:{KEY}"
        )

    async def subscription_event(self, count: int) -> dict[str, Any]:
        """Wait for the subscription's `count`-th event; return it."""
        events = await at_least(count, self.subscription_events, what=f"{count} events of {KEY}")
        return events[count - 1]

    def pushes(self, number: str) -> list[dict[str, Any]]:
        """The invoice's pushes, amounts read as exact Decimals, in EventSequence order."""
        found = []
        for record in self.watcher.on(self.cm.prefix + topics.PUSH_INVOICE):
            push = json.loads(record.value, parse_float=Decimal)["Invoice"]
            if push["WebsiteKey"] == self.website_key and push["InvoiceNumber"] == number:
                found.append(push)
        return sorted(found, key=lambda p: p["EventSequence"])

    async def invoice(self, number: str, count: int) -> None:
        """Wait until the invoice has `count` events and as many pushes."""
        await self.cm.invoices.events(number, count)

        async def pushed() -> bool:
            return len(self.pushes(number)) >= count

        await poll_until(pushed, what=f"{count} pushes of {number}")

    async def timer_cancelled(self) -> None:
        """Wait until the scheduler has answered the CancelTimer of the bill-run timer."""
        timer = f"subscription:{KEY}:billing"

        async def sent() -> str:
            for record in self.watcher.on(self.cm.prefix + topics.SCHEDULER_COMMANDS):
                body = record.json()
                if (
                    body["type"] == "CancelTimer"
                    and body["website_key"] == self.website_key
                    and body["payload"]["timer_id"] == timer
                ):
                    return str(body["message_id"])
            return ""

        await self.accepted(await poll_until(sent, what=f"CancelTimer {timer}"))


@pytest.fixture
async def life(kafka_bootstrap: str, database_url: str, tmp_path: Path) -> AsyncIterator[Lifecycle]:
    with SmtpSink() as smtp:
        async with mailing_services(
            kafka_bootstrap, database_url, smtp, tmp_path, "subscription"
        ) as cm:
            running = Lifecycle(cm, smtp)
            await running.watcher.start()
            try:
                yield running
            finally:
                await running.watcher.stop()


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


async def play(
    cm: Platform, first: date, last: date, on: dict[str, Callable[[], Awaitable[None]]]
) -> None:
    """Tick at each midnight from `first` to `last`; after the tick of a day in `on`
    (ISO date), run its action before the clock moves on."""
    day = first
    while day <= last:
        await cm.tick(midnight(day))
        if (action := on.get(day.isoformat())) is not None:
            await action()
        day += timedelta(days=1)


def push_summary(pushes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(event, date, status, paid, credit notes, admin costs, open incl. costs) per push."""
    return [
        (
            p["Event"],
            p["EventDateTime"][:10],
            p["InvoiceStatusCode"],
            p["AmountPaid"],
            p["AmountCreditNotes"],
            p["AmountAdminCosts"],
            p["OpenAmountInclAdminCosts"],
        )
        for p in pushes
    ]


async def test_four_months_price_change_unpaid_invoice_stops_the_subscription(
    life: Lifecycle,
) -> None:
    cm, inv = life.cm, life.cm.invoices
    scheme = await inv.command(
        "UpsertScheme",
        {"scheme_key": SCHEME, "name": "DefaultCM1, stopping the service", "steps": SCHEME_STEPS},
        key=f"{life.website_key}:scheme:{SCHEME}",
    )
    await life.accepted(scheme)

    # Signed up on Jan 30; the subscription starts the next day.
    await cm.tick(datetime(2026, 1, 30, 12, 0, tzinfo=UTC))
    created = await life.subscription_command(
        "CreateSubscription",
        {
            "subscription_key": KEY,
            "debtor": debtor(),
            "currency": "EUR",
            "scheme_key": SCHEME,
            "interval": {"unit": "month", "count": 1},
            "billing_timing": "advance",
            "start_date": "2026-01-31",
            "payment_term_days": 14,
            "rate_plans": plans(),
        },
        "2026-01-30T12:00:00+00:00",
    )
    await life.accepted(created)
    await life.subscription_event(1)

    async def billed(period: int, event: int) -> None:
        """The bill run's PeriodBilled (the subscription's `event`-th event) and the
        period's invoice: created, and its payment invitation sent."""
        await life.subscription_event(event)
        await life.invoice(f"{KEY}-{period}", 2)

    async def pay(number: str, amount: str, count: int, day: str) -> None:
        await inv.transaction(
            number, "TX-1", amount, "success", occurred_at=f"{day}T10:00:00+00:00"
        )
        await life.invoice(number, count)

    async def change_price() -> None:
        update = await life.subscription_command(
            "UpdateSubscription",
            {
                "subscription_key": KEY,
                "change_rate_plans": [{"product_code": "HOSTING", "unit_price": "24.99"}],
            },
            "2026-03-10T11:00:00+00:00",
        )
        await life.accepted(update)
        await life.subscription_event(4)

    async def stopped() -> None:
        await life.subscription_event(7)
        await life.timer_cancelled()  # no bill run is left at the scheduler
        await life.invoice(f"{KEY}-4", 3)  # the credit note on period 4

    await play(
        cm,
        date(2026, 1, 31),
        date(2026, 6, 30),
        {
            "2026-01-31": lambda: billed(1, 2),
            "2026-02-10": lambda: pay(f"{KEY}-1", "55.19", 3, "2026-02-10"),
            "2026-02-28": lambda: billed(2, 3),
            "2026-03-10": change_price,
            "2026-03-21": lambda: life.invoice(f"{KEY}-2", 3),  # reminder
            "2026-03-25": lambda: pay(f"{KEY}-2", "62.00", 4, "2026-03-25"),
            "2026-03-31": lambda: billed(3, 5),
            "2026-04-21": lambda: life.invoice(f"{KEY}-3", 3),  # reminder
            "2026-04-30": lambda: billed(4, 6),
            "2026-05-05": lambda: life.invoice(f"{KEY}-3", 4),  # the 14-day letter
            "2026-05-19": stopped,
            "2026-05-21": lambda: life.invoice(f"{KEY}-4", 4),  # reminder
            "2026-05-22": lambda: life.invoice(f"{KEY}-3", 5),  # statutory costs
            "2026-06-04": lambda: life.invoice(f"{KEY}-4", 5),  # the 14-day letter
            "2026-06-05": lambda: life.invoice(f"{KEY}-3", 6),  # to the collection agency
        },
    )
    await settle(life)
    assert_subscription_events(life)
    assert_invoice_commands(await commands(life, topics.INVOICE_COMMANDS))
    assert_pushes(life)
    assert [m.subject for m in life.smtp.to("jan@example.test")] == [
        f"Factuur {KEY}-1",
        f"Factuur {KEY}-2",
        f"Herinnering factuur {KEY}-2",
        f"Factuur {KEY}-3",
        f"Herinnering factuur {KEY}-3",
        f"Factuur {KEY}-4",
        f"Laatste herinnering factuur {KEY}-3 (veertiendagenbrief)",
        f"Herinnering factuur {KEY}-4",
        f"Laatste herinnering factuur {KEY}-4 (veertiendagenbrief)",
    ]
    assert inv.watcher.on(cm.prefix + topics.DLQ) == []


async def test_the_reason_of_a_stop_is_in_the_stopped_event(life: Lifecycle) -> None:
    """StopSubscription's `reason` ("why, for the event log") comes out as the
    SubscriptionStopped event's `reason` (contracts.subscription.SubscriptionEvent)."""
    await life.cm.tick(datetime(2026, 1, 30, 12, 0, tzinfo=UTC))
    created = await life.subscription_command(
        "CreateSubscription",
        {
            "subscription_key": KEY,
            "debtor": debtor(),
            "currency": "EUR",
            "interval": {"unit": "month", "count": 1},
            "start_date": "2026-01-31",
            "rate_plans": plans(),
        },
        "2026-01-30T12:00:00+00:00",
    )
    await life.accepted(created)
    stop = await life.subscription_command(
        "StopSubscription",
        {"subscription_key": KEY, "end_date": "2026-02-27", "reason": "moving abroad"},
        "2026-01-30T13:00:00+00:00",
    )
    await life.accepted(stop)
    stopped = await life.subscription_event(2)
    assert stopped["event"] == "SubscriptionStopped"
    assert stopped["subscription"]["end_date"] == "2026-02-27"
    assert stopped["reason"] == "moving abroad"


# --- what the merchant sees --------------------------------------------------------------------


async def settle(life: Lifecycle) -> None:
    """Sentinels behind everything the clock set off: a bill run by hand as of the last
    day (after the timers' runs on the same key) bills nothing, and a custom event on
    each invoice comes out as its last push."""
    run = await life.subscription_command(
        "RunBilling", {"subscription_key": KEY, "as_of": "2026-06-30"}, "2026-06-30T12:00:00+00:00"
    )
    assert (await life.accepted(run))["payload"]["keys"]["periods_billed"] == "0"
    for n, count in ((1, 3), (2, 4), (3, 6), (4, 6)):
        number = f"{KEY}-{n}"
        mid = await life.cm.invoices.command(
            "CreateCustomEvent",
            {"invoice_number": number, "message": "sentinel"},
            occurred_at="2026-06-30T12:00:00+00:00",
        )
        await life.accepted(mid)
        await life.invoice(number, count + 1)


async def commands(life: Lifecycle, topic: str) -> list[dict[str, Any]]:
    """The merchant's messages on `topic`, from its beginning."""
    return [
        body
        for record in await read_all(life.cm.bootstrap, life.cm.prefix + topic)
        if (body := record.json())["website_key"] == life.website_key
    ]


def assert_subscription_events(life: Lifecycle) -> None:
    records = [
        r.json()
        for r in life.watcher.on(life.cm.prefix + topics.SUBSCRIPTION_EVENTS)
        if r.key == f"{life.website_key}:{KEY}"
    ]
    summary = [
        (
            r["occurred_at"][:10],
            r["payload"]["event"],
            r["payload"]["period_index"],
            r["payload"]["invoice_number"],
            r["payload"]["subscription"]["status"],
            r["payload"]["subscription"]["end_date"],
            r["payload"]["subscription"]["next_period_index"],
            r["payload"]["subscription"]["next_billing_date"],
        )
        for r in records
    ]
    # Invoice 4's own StopSubscription step (Jun 18) changes nothing: still stopped on
    # May 19, no second event, no second credit.
    assert summary == [
        ("2026-01-30", "SubscriptionCreated", None, None, "active", None, 1, "2026-01-31"),
        ("2026-01-31", "PeriodBilled", 1, f"{KEY}-1", "active", None, 2, "2026-02-28"),
        ("2026-02-28", "PeriodBilled", 2, f"{KEY}-2", "active", None, 3, "2026-03-31"),
        ("2026-03-10", "SubscriptionUpdated", None, None, "active", None, 3, "2026-03-31"),
        ("2026-03-31", "PeriodBilled", 3, f"{KEY}-3", "active", None, 4, "2026-04-30"),
        ("2026-04-30", "PeriodBilled", 4, f"{KEY}-4", "active", None, 5, "2026-05-31"),
        # The scheme's step 4 on invoice 3: due Apr 14 + 35 days.
        ("2026-05-19", "SubscriptionStopped", None, f"{KEY}-3", "stopped", "2026-05-19", 5, None),
    ]
    prices = [
        [
            (p["product_code"], p["unit_price"], p["quantity"])
            for p in r["payload"]["subscription"]["rate_plans"]
        ]
        for r in records
    ]
    before = [("HOSTING", "19.99", "2"), ("MAGAZINE", "12.50", "1")]
    after = [("HOSTING", "24.99", "2"), ("MAGAZINE", "12.50", "1")]
    assert prices == [before, before, before, after, after, after, after]


#: The bill runs' CreateInvoice commands, computed by hand (VAT per line, half-even):
#: (number, invoice date, due date, debit, VAT, lines (sku, quantity, unit price, VAT %)).
HOSTING_OLD = ("HOSTING", "2", "19.99", "21")
HOSTING_NEW = ("HOSTING", "2", "24.99", "21")
MAGAZINE = ("MAGAZINE", "1", "12.50", "9")
#: A prorated line is one unit at the amount it bills (its description gives the days).
MAGAZINE_PRORATED = ("MAGAZINE", "1", "6.25", "9")
INVOICES = [
    # Period 1, Jan 31 - Feb 27 (28 days; Feb 28 is period 2's clamped start):
    # HOSTING 2 x 19.99 = 39.98, VAT 8.3958 -> 8.40; MAGAZINE from Feb 14, 14/28 days of
    # 12.50 = 6.25, VAT 0.5625 -> 0.56. Net 46.23 + VAT 8.96 = 55.19.
    (
        f"{KEY}-1",
        "2026-01-31",
        "2026-02-14",
        "55.19",
        "8.96",
        [HOSTING_OLD, MAGAZINE_PRORATED],
    ),
    # Period 2, Feb 28 - Mar 30: 39.98 + 8.40; 12.50 + 1.125 -> 1.12 (half-even).
    # Net 52.48 + VAT 9.52 = 62.00.
    (f"{KEY}-2", "2026-02-28", "2026-03-14", "62.00", "9.52", [HOSTING_OLD, MAGAZINE]),
    # Period 3, Mar 31 - Apr 29, at the new price: 2 x 24.99 = 49.98, VAT 10.4958 ->
    # 10.50; 12.50 + 1.12. Net 62.48 + VAT 11.62 = 74.10. Period 4, Apr 30 - May 30: same.
    (f"{KEY}-3", "2026-03-31", "2026-04-14", "74.10", "11.62", [HOSTING_NEW, MAGAZINE]),
    (f"{KEY}-4", "2026-04-30", "2026-05-14", "74.10", "11.62", [HOSTING_NEW, MAGAZINE]),
]
#: Period 4 (31 days) stopped on May 19: 20 days used, 11 credited.
#: HOSTING: used 49.98 x 20/31 = 32.245.. -> 32.25, VAT 6.7725 -> 6.77; credit
#: 49.98 - 32.25 = 17.73 and 10.50 - 6.77 = 3.73. MAGAZINE: used 12.50 x 20/31 = 8.064..
#: -> 8.06, VAT 0.7254 -> 0.73; credit 4.44 and 1.12 - 0.73 = 0.39. Total 26.29.
CREDIT = D("26.29")


def assert_invoice_commands(sent: list[dict[str, Any]]) -> None:
    created = sorted(  # one partition per invoice key: no order across them
        (c["payload"] for c in sent if c["type"] == "CreateInvoice"),
        key=lambda c: int(c["invoice_number"].rsplit("-", 1)[1]),
    )
    assert [
        (
            c["invoice_number"],
            c["invoice_date"],
            c["due_date"],
            c["amount_debit"],
            c["amount_vat"],
            [
                (li["sku"], li["quantity"], li["unit_price"], li["vat_percentage"])
                for li in c["lines"]
            ],
        )
        for c in created
    ] == INVOICES
    for c in created:
        assert c["currency"] == "EUR"
        assert c["subscription_key"] == KEY
        assert c["scheme_key"] == SCHEME
        assert c["debtor"]["code"] == "D-1"
    prorated = created[0]["lines"][1]["description"]
    assert prorated == "Monthly magazine (2026-02-14 to 2026-02-27, 14/28 days of 1 x 12.50)"
    # The lines add up to the invoice: quantity x unit price + VAT per line.
    for c in created:
        net = sum(D(li["quantity"]) * D(li["unit_price"]) for li in c["lines"])
        assert net == D(c["amount_debit"]) - D(c["amount_vat"]), c["invoice_number"]
    assert [
        (
            c["payload"]["original_invoice_number"],
            c["payload"]["credit_note_number"],
            D(c["payload"]["amount"]),
        )
        for c in sent
        if c["type"] == "CreateCreditNote"
    ] == [(f"{KEY}-4", f"{KEY}-4-CR-20260519", CREDIT)]


def assert_pushes(life: Lifecycle) -> None:
    def row(
        event: str, day: str, status: int, paid: str, credited: str, costs: str, open_: str
    ) -> tuple[Any, ...]:
        return (event, day, status, D(paid), D(credited), D(costs), D(open_))

    zero = "0.00"
    expected = {
        1: [
            row("ChangedStatus", "2026-01-31", 10, zero, zero, zero, "55.19"),
            row("SentPaymentInvitationMessage", "2026-01-31", 10, zero, zero, zero, "55.19"),
            row("ChangedTransactionStatus", "2026-02-10", 10, "55.19", zero, zero, zero),
        ],
        2: [
            row("ChangedStatus", "2026-02-28", 10, zero, zero, zero, "62.00"),
            row("SentPaymentInvitationMessage", "2026-02-28", 10, zero, zero, zero, "62.00"),
            row("SentReminderMessage", "2026-03-21", 10, zero, zero, zero, "62.00"),  # due + 7
            row("ChangedTransactionStatus", "2026-03-25", 10, "62.00", zero, zero, zero),
        ],
        3: [
            row("ChangedStatus", "2026-03-31", 10, zero, zero, zero, "74.10"),
            row("SentPaymentInvitationMessage", "2026-03-31", 10, zero, zero, zero, "74.10"),
            row("SentReminderMessage", "2026-04-21", 10, zero, zero, zero, "74.10"),  # due + 7
            row("SentReminderMessage", "2026-05-05", 10, zero, zero, zero, "74.10"),  # due + 21
            # Step 4 (May 19) stops the subscription: no push of its own.
            # Statutory costs on 74.10: 15% is 11.12, the minimum 40.00 applies.
            row("IncreasedAdminFee", "2026-05-22", 10, zero, zero, "40.00", "114.10"),
            row("TransferredToCollectionAgency", "2026-06-05", 70, zero, zero, "40.00", "114.10"),
        ],
        4: [
            row("ChangedStatus", "2026-04-30", 10, zero, zero, zero, "74.10"),
            row("SentPaymentInvitationMessage", "2026-04-30", 10, zero, zero, zero, "74.10"),
            row("CreatedCreditNote", "2026-05-19", 10, zero, "26.29", zero, "47.81"),
            row("SentReminderMessage", "2026-05-21", 10, zero, "26.29", zero, "47.81"),
            row("SentReminderMessage", "2026-06-04", 10, zero, "26.29", zero, "47.81"),
            row("IncreasedAdminFee", "2026-06-21", 10, zero, "26.29", "40.00", "87.81"),
        ],
    }
    for n, (number, invoice_date, due_date, debit, _vat, _lines) in enumerate(INVOICES, start=1):
        pushes = life.pushes(number)
        assert pushes[-1]["Event"] == "CustomEvent"  # the sentinel: nothing came after it
        pushes = pushes[:-1]
        assert push_summary(pushes) == expected[n], number
        assert [p["EventSequence"] for p in pushes] == list(range(1, len(pushes) + 1))
        for push in pushes:
            assert push["Type"] == "SubscriptionInvoice"
            assert push["SchemeKey"] == SCHEME
            assert push["InvoiceDate"] == f"{invoice_date}T00:00:00"
            assert push["DueDate"] == f"{due_date}T00:00:00"
            assert push["AmountDebit"] == D(debit)
    [credit] = [p for p in life.pushes(f"{KEY}-4") if p["Event"] == "CreatedCreditNote"]
    assert {"Key": "CreditNoteNumber", "Value": f"{KEY}-4-CR-20260519"} in credit["EventParameters"]
    assert {"Key": "Amount", "Value": "26.29"} in credit["EventParameters"]
    # Nothing after the stop is billed, however far the clock goes.
    assert life.pushes(f"{KEY}-5") == [] and life.pushes(f"{KEY}-6") == []
