"""``/v1/vocabulary``: the tenant's default vocabulary (hot words) and replacements, added to every
job and batch it submits (a job's own lists come after, and its replacements win)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.deps import Caller, CallerDep, DbDep
from api.errors import ApiError
from api.routes.jobs import ERRORS
from api.schemas import ErrorResponse, VocabularyOut
from shared.db.models import TenantVocabulary
from shared.text.options import parse_text_options

router = APIRouter(prefix="/v1/vocabulary", tags=["vocabulary"])


def _view(row: TenantVocabulary | None) -> VocabularyOut:
    if row is None:
        return VocabularyOut(words=[], replacements={}, updated_at=None)
    return VocabularyOut(
        words=list(row.words), replacements=dict(row.replacements), updated_at=row.updated_at
    )


def _put(db: Session, caller: Caller, body: dict[str, Any]) -> VocabularyOut:
    unknown = sorted(set(body) - {"words", "replacements"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field {unknown[0]!r}: send words and replacements")
    words = body.get("words")
    replacements = body.get("replacements")
    options = parse_text_options(
        {
            "vocabulary": [] if words is None else words,
            "replacements": {} if replacements is None else replacements,
        }
    )
    row = db.get(TenantVocabulary, caller.tenant_id)
    if row is None:
        row = TenantVocabulary(tenant_id=caller.tenant_id)
        db.add(row)
    row.words = list(options.vocabulary)
    row.replacements = dict(options.replacements)
    db.commit()
    db.refresh(row)
    return _view(row)


@router.get("", response_model=VocabularyOut, summary="The tenant's default vocabulary", responses=ERRORS)
def get_vocabulary(caller: CallerDep, db: DbDep) -> VocabularyOut:
    return _view(db.get(TenantVocabulary, caller.tenant_id))


@router.put(
    "",
    response_model=VocabularyOut,
    summary="Replace the tenant's default vocabulary",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VocabularyIn"}}},
        }
    },
    responses={
        **ERRORS,
        422: {"model": ErrorResponse, "description": "invalid_vocabulary, invalid_replacements"},
    },
)
async def put_vocabulary(request: Request, caller: CallerDep, db: DbDep) -> VocabularyOut:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be an object {words, replacements}")
    return await run_in_threadpool(_put, db, caller, body)


@router.delete("", status_code=204, summary="Remove the tenant's default vocabulary", responses=ERRORS)
def delete_vocabulary(caller: CallerDep, db: DbDep) -> Response:
    row = db.get(TenantVocabulary, caller.tenant_id)
    if row is not None:
        db.delete(row)
        db.commit()
    return Response(status_code=204)
