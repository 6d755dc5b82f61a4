"""JSON from clients, bounded: a body's size is capped by :class:`api.uploads.BodyLimitMiddleware`
(``JSON_LIMIT``; a batch manifest ``MANIFEST_LIMIT``), its nesting here (``MAX_DEPTH``), and a
``metadata`` object's encoded size by :func:`check_metadata` (``METADATA_LIMIT``).

Python's decoder recurses per level and raises ``RecursionError`` around a thousand levels: that, and
anything nested deeper than ``MAX_DEPTH``, is a 400 ``json_too_deep`` instead of a 500.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import CodedError

JSON_LIMIT = 1024 * 1024  # every JSON body but a batch manifest
MANIFEST_LIMIT = 32 * 1024 * 1024  # POST /v1/batches as JSON: 10 000 items with metadata fit easily
MAX_DEPTH = 32  # nesting of a whole JSON body (metadata sits one or two levels down)
METADATA_LIMIT = 16 * 1024  # a job's or an item's metadata, as compact JSON (UTF-8 bytes)


def too_deep() -> CodedError:
    return CodedError(
        f"the JSON is nested more than {MAX_DEPTH} levels deep", code="json_too_deep", status=400
    )


def depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursing."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest


def loads(raw: bytes | str) -> Any:
    """``raw`` decoded; 400 ``invalid_json`` or ``json_too_deep``."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise too_deep() from None
    except ValueError:
        raise CodedError("the body is not valid JSON", code="invalid_json", status=400) from None
    if depth(value) > MAX_DEPTH:
        raise too_deep()
    return value


def check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """``value`` when it nests at most ``MAX_DEPTH`` levels and encodes to at most ``METADATA_LIMIT``
    bytes; else 400 ``json_too_deep`` / ``metadata_too_large`` (it is stored, listed and sent with
    every webhook, so it stays small)."""
    if value is None:
        return None
    if depth(value) > MAX_DEPTH:
        raise too_deep()
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > METADATA_LIMIT:
        raise CodedError(
            f"metadata holds {size} bytes as JSON, over the limit of {METADATA_LIMIT}",
            code="metadata_too_large",
            status=400,
        )
    return value
