"""Answers for commands whose behaviour a later issue brings.

A service consumes every command of its topics from the first release on; a command it
cannot perform yet is refused with `not_implemented` instead of being dropped, so the
sender always gets one clear answer.
"""

from __future__ import annotations

from typing import Any

from contracts.envelope import FieldError
from services.runtime.consumer import HandlerContext, HandlerSpec


async def _refuse(ctx: HandlerContext, payload: Any) -> None:
    ctx.reject([FieldError("type", "not_implemented", f"{ctx.envelope.type} is not available yet")])


async def _ignore(ctx: HandlerContext, payload: Any) -> None:
    return None


def refuse_all(*types: str) -> dict[str, HandlerSpec]:
    return {name: HandlerSpec(_refuse) for name in types}


def ignore_internal(*types: str) -> dict[str, HandlerSpec]:
    """Internal messages (no result owed) that are recorded but have no effect yet."""
    return {name: HandlerSpec(_ignore, answers=False) for name in types}
