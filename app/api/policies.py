"""Policies: how the runs that use them are recovered."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.deps import PolicyIdPath, SessionDep, SettingsDep, require_token
from app.api.responses import errors
from app.config import Settings
from app.engine.commands import new_id, runs_using
from app.errors import PolicyExists, PolicyInUse, PolicyNotFound, ValidationFailed
from app.schemas import PolicyFields, PolicyIn, PolicyList, PolicyOut
from app.storage.models import Policy
from app.storage.types import utcnow
from app.webhooks.targets import check_url_literal

router = APIRouter(
    prefix="/policies",
    tags=["policies"],
    dependencies=[Depends(require_token)],
    responses=errors(ValidationFailed),
)

WEBHOOK_FIELDS = ("on_recovery_url", "on_failure_url", "on_restart_url")


async def find_policy(session: AsyncSession, policy_id: str) -> Policy:
    """The policy with this id, or `policy_not_found`."""
    policy = await session.get(Policy, policy_id)
    if policy is None:
        raise PolicyNotFound(f"policy {policy_id!r} does not exist")
    return policy


def check_targets(body: PolicyFields, settings: Settings) -> None:
    """Refuse webhooks aimed at this machine or a private network, unless allowed."""
    for field in WEBHOOK_FIELDS:
        url = getattr(body, field)
        if url is None:
            continue
        try:
            check_url_literal(url, settings.webhook_allow_private)
        except ValueError as error:
            raise ValidationFailed(field, str(error)) from error


async def ensure_name_free(
    session: AsyncSession, name: str, keep: str | None = None
) -> None:
    """Refuse a name that another policy already has."""
    found = await session.exec(select(Policy.id).where(Policy.name == name))
    owner = found.one_or_none()
    if owner is not None and owner != keep:
        raise PolicyExists(f"a policy named {name!r} already exists")


async def create_policy(
    session: AsyncSession, body: PolicyIn, owner_run_id: str | None = None
) -> Policy:
    """Store a new policy with a unique name."""
    await ensure_name_free(session, body.name)
    now = utcnow()
    policy = Policy(
        id=new_id(),
        owner_run_id=owner_run_id,
        created_at=now,
        updated_at=now,
        **body.model_dump(),
    )
    session.add(policy)
    try:
        await session.flush()
    except IntegrityError as error:
        # Two requests raced for the same name; the database kept one.
        raise PolicyExists(f"a policy named {body.name!r} already exists") from error
    return policy


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=errors(PolicyExists, ValidationFailed),
)
async def post_policy(
    body: PolicyIn, session: SessionDep, settings: SettingsDep
) -> PolicyOut:
    """Create a policy."""
    check_targets(body, settings)
    return PolicyOut.model_validate(await create_policy(session, body))


@router.get("")
async def list_policies(session: SessionDep) -> PolicyList:
    """List the policies, oldest first."""
    rows = await session.exec(select(Policy).order_by(col(Policy.created_at)))
    return PolicyList(items=[PolicyOut.model_validate(p) for p in rows])


@router.get("/{policy_id}", responses=errors(PolicyNotFound))
async def get_policy(policy_id: PolicyIdPath, session: SessionDep) -> PolicyOut:
    """Read one policy."""
    return PolicyOut.model_validate(await find_policy(session, policy_id))


@router.put(
    "/{policy_id}",
    responses=errors(PolicyNotFound, PolicyExists, ValidationFailed),
)
async def put_policy(
    policy_id: PolicyIdPath, body: PolicyIn, session: SessionDep, settings: SettingsDep
) -> PolicyOut:
    """Replace a policy; runs that use it follow from their next poll or attempt."""
    check_targets(body, settings)
    policy = await find_policy(session, policy_id)
    await ensure_name_free(session, body.name, keep=policy.id)
    for field, value in body.model_dump().items():
        setattr(policy, field, value)
    policy.updated_at = utcnow()
    await session.flush()
    return PolicyOut.model_validate(policy)


@router.delete(
    "/{policy_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(PolicyNotFound, PolicyInUse),
)
async def delete_policy(policy_id: PolicyIdPath, session: SessionDep) -> Response:
    """Delete a policy that no watched run uses."""
    policy = await find_policy(session, policy_id)
    in_use = await runs_using(session, policy.id)
    if in_use:
        raise PolicyInUse(f"policy {policy_id!r} is used by {in_use} watched run(s)")
    await session.delete(policy)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
