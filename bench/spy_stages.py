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

#: Stage → frames (substrings of a collapsed frame) of which a sample must hold one.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("consumer: parse (JSON + envelope validation)", ("BatchConsumer._parse ",)),
    ("  json.loads", ("loads (json/__init__.py",)),
    ("  envelope model_validate", ("BaseModel.model_validate (pydantic",)),
    ("handler: create_invoice", ("create_invoice (services/invoice/handlers.py",)),
    ("  domain (decide)", ("(services/invoice/domain/",)),
    ("  debtor snapshot", ("Publisher._know ",)),
    ("  invoice snapshot", ("invoice_snapshot (services/invoice/snapshot.py",)),
    ("  timer message", ("Publisher._timer_message ",)),
    ("  envelope → JSON (to_json)", ("Envelope.to_json ",)),
    ("  new_envelope (events, answer, timer)", ("new_envelope (contracts/envelope.py",)),
    ("  repository (save, log events)", ("InvoiceRepository.",)),
    ("consumer: answer (accept, CommandAccepted JSON)", ("HandlerContext.accept ",)),
    ("consumer: log context (structlog bind/unbind)", ("contextvars",)),
    ("consumer: metrics (prometheus labels/inc)", ("prometheus_client",)),
    ("batch hooks: begin", ("InvoiceBatchHooks.begin ",)),
    ("batch hooks: finish (flush)", ("InvoiceBatchHooks.finish ",)),
    ("consumer: inbox insert", ("BatchConsumer._transact (services/runtime/consumer.py:6",)),
    ("consumer: results + enqueue (_write)", ("BatchConsumer._write ",)),
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
                for stage, frames in STAGES:
                    if any(frame in stack for frame in frames):
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
    for stage, _ in STAGES:
        share = stages[stage] / consumer
        figure = f"{share * args.us:7.1f} µs" if args.us else ""
        print(f"{share:6.1%} {figure}  {stage}")


if __name__ == "__main__":
    main()
