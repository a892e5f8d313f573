"""Rows turned into response bodies, and the error responses routes declare."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import ServiceError
from app.schemas import AttemptOut, ErrorBody, RecoveryOut, RunOut
from app.storage.models import Attempt, Recovery, Run

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def errors(*kinds: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting the errors a route can answer with."""
    documented: dict[int | str, dict[str, Any]] = {}
    for kind in kinds:
        entry = documented.setdefault(
            kind.status_code,
            {
                "model": ErrorBody,
                "description": "",
                # Errors are JSON even where the success is another media type.
                "content": {"application/json": {"schema": ERROR_REF}},
            },
        )
        codes = [c for c in entry["description"].split(", ") if c]
        entry["description"] = ", ".join([*codes, kind.code])
    return documented


def run_out(run: Run) -> RunOut:
    return RunOut.model_validate(
        {**run.model_dump(exclude={"metadata_"}), "metadata": run.metadata_}
    )


async def recovery_out(session: AsyncSession, recovery: Recovery) -> RecoveryOut:
    rows = await session.exec(
        select(Attempt)
        .where(Attempt.recovery_id == recovery.id)
        .order_by(col(Attempt.attempt))
    )
    attempts = [AttemptOut.model_validate(row) for row in rows]
    return RecoveryOut.model_validate({**recovery.model_dump(), "attempts": attempts})
