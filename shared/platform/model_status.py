"""Is there a model? What ``/health`` says about it, from two sources:

- the API's own look at ``TONE_MODEL_PATH`` (cheap: the files' presence, never a load), or, without a
  path, at the Hugging Face cache;
- what the workers of a queue reported after their last load (``report``, in Redis): a worker that
  could not load the model says why, one that did says so.

A worker's report wins over the API's look (it has really tried); without a path and with no report
yet, a model that is not in the cache is reported missing until a worker has downloaded it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from shared.platform.settings import Settings

log = logging.getLogger("tone.model")

ModelState = Literal["ok", "missing", "error"]
KEY = "tone:model:{queue}"
REPORT_TTL_SECONDS = 24 * 3600
HOW_TO_GET_ONE = (
    "set TONE_MODEL_PATH to T-one's files (model.onnx [+ kenlm.bin] from huggingface.co/t-tech/T-one), "
    "or on an offline machine run `make models` and TONE_MODEL_PATH=.cache/test-models/tones for the "
    "tones test model"
)


def report(client: Any, queue: str, error: BaseException | None) -> None:
    """A worker of ``queue`` tells how its last model load went (never raises)."""
    body: dict[str, Any] = {"ok": error is None, "at": time.time()}
    if error is not None:
        body.update(code=getattr(error, "code", "model_error"), message=str(error))
    try:
        client.set(KEY.format(queue=queue), json.dumps(body), ex=REPORT_TTL_SECONDS)
    except Exception as exc:  # Redis trouble must not break a worker
        log.warning("model status not reported: %s", exc)


def _reported(client: Any, queue: str) -> dict[str, Any] | None:
    try:
        raw = client.get(KEY.format(queue=queue))
    except Exception:
        return None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _look(settings: Settings) -> str | None:
    """Why the configured model is not there, or None when its files are (or a worker may fetch it)."""
    from shared.asr.model import HF_REPO, MODEL_FILE, locate_model
    from shared.errors import CodedError

    if settings.model_path:
        try:
            locate_model(settings.model_path, download=False)
        except CodedError as exc:
            return exc.message
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(HF_REPO, MODEL_FILE)
    except Exception:
        cached = None
    if isinstance(cached, str):
        return None
    return f"no TONE_MODEL_PATH and {HF_REPO} is not in the Hugging Face cache (yet)"


def model_health(settings: Settings, client: Any) -> tuple[ModelState, str | None]:
    """``(state, error)`` for ``/health``: ok, missing (no files) or error (a worker failed to load it)."""
    reported = _reported(client, settings.worker_queue)
    if reported is not None and not reported.get("ok"):
        return (
            "error",
            f"{reported.get('code', 'model_error')}: {reported.get('message', '')}; {HOW_TO_GET_ONE}",
        )
    why = _look(settings)
    if why is None or (reported is not None and reported.get("ok") and not settings.model_path):
        return "ok", None
    return "missing", f"{why}; {HOW_TO_GET_ONE}"
