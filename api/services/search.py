"""``GET /v1/search`` for the caller's tenant: the queries live in ``shared.platform.search_query``
(shared with the benchmark); their ``SearchError`` is a coded error the API renders as 400."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.deps import Caller
from shared.platform.search_query import MAX_METADATA_FILTERS, SearchFilter
from shared.platform.search_query import search as search_tenant

__all__ = ["MAX_METADATA_FILTERS", "SearchFilter", "search"]


def search(db: Session, caller: Caller, f: SearchFilter) -> dict[str, Any]:
    return search_tenant(db, caller.tenant_id, f)
