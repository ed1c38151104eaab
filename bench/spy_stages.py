"""Where the invoice path's CPU goes, from a py-spy raw (collapsed) profile of
`bench.profile_invoice --plain` (issue 14; bench/README.md, "Where the time goes").

    py-spy record -r 250 -f raw -o /tmp/invoice.txt -- \\
        .venv/bin/python -m bench.profile_invoice --n 6000 --plain
    .venv/bin/python -m bench.spy_stages /tmp/invoice.txt --us 700

A sample belongs to the consumer when `BatchConsumer.handle_batch` is on its stack, to the
relay with `OutboxRelay.relay_batch`, and to the database driver's callbacks when an
`asyncpg` protocol frame runs from the event loop; a stage is every sample with one of
its frames on the stack (stages nest). With `--us` (the consumer's CPU µs per invoice
that `bench.profile_invoice` printed), shares become µs per invoice.
"""

from __future__ import annotations

import argparse
from collections import Counter

#: Stage → frames (substrings of a collapsed frame) of which a sample must hold one, and
#: the frame it must be inside of (None: anywhere in the consumer).
STAGES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("consumer: parse (JSON + envelope validation)", ("BatchConsumer._parse ",), None),
    ("  json.loads", ("loads (json/__init__.py",), "BatchConsumer._parse "),
    ("  envelope validation", ("BaseModel.model_validate ",), "BatchConsumer._parse "),
    ("  e-mail address check", ("_header_address",), "BatchConsumer._parse "),
    ("handler: create_invoice", ("create_invoice (services/invoice/handlers.py",), None),
    ("  domain (decide)", ("(services/invoice/domain/",), None),
    (
        "  reads of the batch's rows (held since begin)",
        (
            "InvoiceRepository.get ",
            "InvoiceRepository.take_parked ",
            "InvoiceRepository.scheme ",
            "InvoiceRepository.merchant_settings ",
        ),
        None,
    ),
    ("  debtor upsert + snapshot", ("Publisher._know ", "upsert_debtor "), None),
    ("  invoice snapshot", ("invoice_snapshot (services/invoice/snapshot.py",), None),
    ("  InvoiceEvent.of (validated)", ("InvoiceEvent.of ",), None),
    ("  timer message", ("Publisher._timer_message ",), None),
    ("  envelope → JSON (to_json)", ("Envelope.to_json ",), None),
    ("  new_envelope (events, answer, timer)", ("new_envelope (contracts/envelope.py",), None),
    ("consumer: answer (accept, CommandAccepted JSON)", ("HandlerContext.accept ",), None),
    ("consumer: log context (structlog bind/unbind)", ("contextvars",), None),
    ("consumer: metrics (prometheus)", ("prometheus_client",), None),
    ("batch hooks: begin (locks, reads)", ("InvoiceBatchHooks.begin ",), None),
    ("batch hooks: finish (flush: rows as JSON)", ("InvoiceBatchHooks.finish ",), None),
    ("consumer: results + enqueue (_write)", ("BatchConsumer._write ",), None),
)


def summarize(path: str) -> tuple[Counter[str], Counter[str]]:
    groups: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            if "BatchConsumer.handle_batch " in stack:
                groups["consumer (handle_batch)"] += n
                for stage, frames, inside in STAGES:
                    scope = stack if inside is None else stack.partition(inside)[2]
                    if any(frame in scope for frame in frames):
                        stages[stage] += n
            elif "OutboxRelay.relay_batch " in stack:
                groups["relay (relay_batch)"] += n
            elif "asyncpg" in stack:
                groups["asyncpg callbacks (event loop)"] += n
            else:
                groups["other (setup, event loop, load)"] += n
    return groups, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--us", type=float, default=0.0, help="consumer CPU µs per invoice")
    args = parser.parse_args()
    groups, stages = summarize(args.path)
    consumer = groups["consumer (handle_batch)"] or 1
    for group, n in groups.most_common():
        print(f"{n:7d} samples  {group}")
    for stage, _, _ in STAGES:
        share = stages[stage] / consumer
        figure = f"{share * args.us:7.1f} µs" if args.us else ""
        print(f"{share:6.1%} {figure}  {stage}")


if __name__ == "__main__":
    main()
