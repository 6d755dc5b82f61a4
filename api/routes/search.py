"""``/v1/search`` (full-text search over the tenant's transcripts) and ``/v1/rules`` (rules flagging jobs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select

from api.deps import CallerDep, DbDep
from api.errors import ApiError, not_found
from api.routes.jobs import ERRORS
from api.schemas import ErrorResponse, JobStatus, RuleIn, RuleList, RuleOut, SearchGroupPage, SearchPage
from api.services import search as svc
from shared.db.models import JobFlag, Rule
from shared.platform.rules import apply_to_existing, validate

router = APIRouter(tags=["search"])
METADATA_PREFIX = "metadata."


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{what} must be an id (a UUID): {value!r}") from None


def _metadata(request: Request) -> dict[str, str]:
    found = {
        k[len(METADATA_PREFIX) :]: v
        for k, v in request.query_params.multi_items()
        if k.startswith(METADATA_PREFIX)
    }
    if any(not k for k in found):
        raise ApiError(422, "invalid_request", "a metadata filter is metadata.<key>=<value>")
    if len(found) > svc.MAX_METADATA_FILTERS:
        raise ApiError(422, "invalid_request", f"at most {svc.MAX_METADATA_FILTERS} metadata filters")
    return found


@router.get(
    "/v1/search",
    response_model=SearchPage | SearchGroupPage,
    summary='Search the tenant\'s transcripts (stemmed words, "phrases", -exclusions, filters)',
    responses={
        **ERRORS,
        400: {"model": ErrorResponse, "description": "empty query, only exclusions, bad cursor"},
        422: {"model": ErrorResponse, "description": "a filter of the wrong type"},
    },
)
def search(
    request: Request,
    caller: CallerDep,
    db: DbDep,
    q: Annotated[str, Query(description='words (stemmed), "exact phrases", -excluded, or')],
    channel: Annotated[int | None, Query(ge=0, le=1, description="0 agent, 1 client")] = None,
    batch_id: str | None = None,
    status: JobStatus | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    min_duration: Annotated[float | None, Query(ge=0)] = None,
    max_duration: Annotated[float | None, Query(ge=0)] = None,
    flag: Annotated[list[str] | None, Query(description="jobs flagged by this rule id (repeatable)")] = None,
    group: Literal["job"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> Any:
    f = svc.SearchFilter(
        q=q,
        channel=channel,
        batch_id=_uuid(batch_id, "batch_id") if batch_id else None,
        status=status,
        created_after=created_after,
        created_before=created_before,
        min_duration=min_duration,
        max_duration=max_duration,
        metadata=_metadata(request),
        flags=tuple(_uuid(r, "flag") for r in flag or ()),
        group=group,
        limit=limit,
        cursor=cursor,
    )
    return svc.search(db, caller, f)


def _rule_out(rule: Rule, matches: int = 0) -> RuleOut:
    return RuleOut(id=str(rule.id), name=rule.name, kind=rule.kind, params=rule.params,
                   created_at=rule.created_at, matches=matches)  # fmt: skip


@router.post(
    "/v1/rules",
    status_code=201,
    response_model=RuleOut,
    summary="Create a rule: jobs completed from now on are checked (apply_to_existing: the archive too)",
    responses={**ERRORS, 422: {"model": ErrorResponse, "description": "bad kind or params"}},
)
def create_rule(body: RuleIn, caller: CallerDep, db: DbDep) -> RuleOut:
    params = validate(body.kind, body.params)  # RuleError: 422 invalid_rule, naming what is wrong
    rule = Rule(tenant_id=caller.tenant_id, name=body.name, kind=body.kind, params=params)
    db.add(rule)
    db.flush()
    matches = apply_to_existing(db, rule) if body.apply_to_existing else 0
    db.commit()
    db.refresh(rule)
    return _rule_out(rule, matches)


@router.get("/v1/rules", response_model=RuleList, summary="The tenant's rules", responses=ERRORS)
def list_rules(caller: CallerDep, db: DbDep) -> RuleList:
    """Every rule of the caller's tenant, oldest first, each with how many jobs it flagged."""
    counts = select(JobFlag.rule_id, func.count().label("n")).group_by(JobFlag.rule_id).subquery("counts")
    rows = db.execute(
        select(Rule, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.rule_id == Rule.id)
        .where(Rule.tenant_id == caller.tenant_id)
        .order_by(Rule.created_at, Rule.id)
    ).all()
    return RuleList(data=[_rule_out(rule, n) for rule, n in rows])


def _load_rule(db: DbDep, caller: CallerDep, rule_id: str) -> Rule:
    try:
        key = uuid.UUID(rule_id)
    except ValueError:
        raise not_found() from None
    rule = db.get(Rule, key)
    if rule is None or rule.tenant_id != caller.tenant_id:
        raise not_found()
    return rule


@router.get("/v1/rules/{rule_id}", response_model=RuleOut, summary="One rule", responses=ERRORS)
def get_rule(rule_id: str, caller: CallerDep, db: DbDep) -> RuleOut:
    """One rule of the caller's tenant with how many jobs it flagged; another tenant's is a 404."""
    rule = _load_rule(db, caller, rule_id)
    n = db.scalar(select(func.count()).select_from(JobFlag).where(JobFlag.rule_id == rule.id)) or 0
    return _rule_out(rule, n)


@router.delete(
    "/v1/rules/{rule_id}", status_code=204, summary="Delete a rule and its flags", responses=ERRORS
)
def delete_rule(rule_id: str, caller: CallerDep, db: DbDep) -> Response:
    rule = _load_rule(db, caller, rule_id)
    db.delete(rule)
    db.commit()
    return Response(status_code=204)
