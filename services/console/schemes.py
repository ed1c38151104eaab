"""The scheme form: a new scheme, or a new version of one, as an UpsertScheme.

The form is checked with the contract's own model and then with the invoice service's
own rules (services/invoice/dunning.py `scheme_errors`: step order, channels, costs, the
14-day letter before statutory costs), so it shows the errors the service would answer
with before anything is sent; the service still checks what it receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contracts.envelope import FieldError, field_errors
from contracts.invoice import Channel, StepAction, UpsertScheme
from services.invoice.dunning import scheme_errors

#: Step rows the form offers (blank rows are left out of the scheme).
FORM_ROWS = 8
STEP_ACTIONS = [a.value for a in StepAction]
CHANNELS = [c.value for c in Channel]
_TEXT_FIELDS = ("days", "admin_cost", "threshold_amount", "template_key", "message")


@dataclass
class StepRow:
    action: str = ""
    days: str = ""
    channels: list[str] = field(default_factory=list)
    admin_cost: str = ""
    threshold_amount: str = ""
    template_key: str = ""
    message: str = ""
    states_costs: bool = False


@dataclass
class SchemeForm:
    scheme_key: str = ""
    name: str = ""
    rows: list[StepRow] = field(default_factory=list)


def _padded(rows: list[StepRow]) -> list[StepRow]:
    return rows + [StepRow() for _ in range(max(0, FORM_ROWS - len(rows)))]


def form_of(payload: Mapping[str, Any]) -> SchemeForm:
    """The form filled from an UpsertScheme payload (JSON), for its next version."""
    rows = [
        StepRow(
            action=str(step.get("action") or ""),
            days=str(step.get("days", "")),
            channels=[str(c) for c in step.get("channels") or []],
            admin_cost=str(step.get("admin_cost") or ""),
            threshold_amount=str(step.get("threshold_amount") or ""),
            template_key=str(step.get("template_key") or ""),
            message=str(step.get("message") or ""),
            states_costs=bool(step.get("states_costs")),
        )
        for step in payload.get("steps") or []
    ]
    return SchemeForm(
        scheme_key=str(payload.get("scheme_key") or ""),
        name=str(payload.get("name") or ""),
        rows=_padded(rows),
    )


def read_form(data: Mapping[str, Any]) -> SchemeForm:
    """The form as posted (a Starlette FormData: `getlist` for the channels)."""

    def text(name: str) -> str:
        value = data.get(name)
        return value.strip() if isinstance(value, str) else ""

    rows = []
    for i in range(FORM_ROWS):
        prefix = f"steps-{i}-"
        getlist = getattr(data, "getlist", None)
        channels = [str(c) for c in getlist(prefix + "channels")] if getlist else []
        rows.append(
            StepRow(
                action=text(prefix + "action"),
                channels=channels,
                states_costs=text(prefix + "states_costs") == "on",
                **{name: text(prefix + name) for name in _TEXT_FIELDS},
            )
        )
    return SchemeForm(text("scheme_key"), text("name"), rows)


def _step(row: StepRow, index: int) -> dict[str, Any]:
    step: dict[str, Any] = {
        "index": index,
        "action": row.action,
        "days": row.days,
        "channels": row.channels,
        "states_costs": row.states_costs,
    }
    for name in ("admin_cost", "threshold_amount", "template_key", "message"):
        value = getattr(row, name)
        if value:
            step[name] = value
    return step


def validate(form: SchemeForm) -> tuple[UpsertScheme | None, list[dict[str, str]]]:
    """The command, or the errors per form field (`field`: the input's name; `label`:
    where it is, for people)."""
    used = [i for i, row in enumerate(form.rows) if row.action]
    values = {
        "scheme_key": form.scheme_key,
        "name": form.name,
        "steps": [_step(form.rows[i], n + 1) for n, i in enumerate(used)],
    }
    try:
        payload = UpsertScheme.model_validate(values)
    except ValidationError as exc:
        return None, [_for_form(e, used) for e in field_errors(exc, "payload")]
    errors = scheme_errors(payload.scheme_key, list(payload.steps))
    if errors:
        return None, [_for_form(e, used) for e in errors]
    return payload, []


def _for_form(error: FieldError, used: list[int]) -> dict[str, str]:
    parts = error.field.removeprefix("payload.").split(".")
    if parts[0] == "steps" and len(parts) >= 2 and parts[1].isdigit():
        position = int(parts[1])
        row = used[position] if position < len(used) else position
        name = parts[2] if len(parts) > 2 else "action"
        return {
            "field": f"steps-{row}-{name}",
            "label": f"Step {position + 1}, {name.replace('_', ' ')}",
            "code": error.code,
            "message": error.message,
        }
    return {
        "field": parts[0],
        "label": parts[0].replace("_", " "),
        "code": error.code,
        "message": error.message,
    }


def steps_of(payload: Mapping[str, Any]) -> list[str]:
    """One line per step of a sent scheme, for the list."""
    lines = []
    for step in payload.get("steps") or []:
        line = f"{step['index']}. {step['action']} at day {step['days']}"
        if step.get("channels"):
            line += f" by {', '.join(step['channels'])}"
        if step.get("admin_cost"):
            line += f", costs {step['admin_cost']}"
        if step.get("states_costs"):
            line += ", the 14-day letter"
        lines.append(line)
    return lines
