"""The scheduler service: generic durable timers and the clock."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec
from services.runtime.pending import refuse_all


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="scheduler",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.SCHEDULER_COMMANDS,
                handlers=refuse_all("ScheduleTimer", "CancelTimer", "Tick"),
            ),
        ],
    )
