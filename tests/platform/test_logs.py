"""Log lines: JSON objects with the request and job ids, and which request ids are taken as given."""

from __future__ import annotations

import io
import json
import logging

from shared.platform import logs


def test_json_lines_carry_the_request_id_and_the_job() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler, "json")
    logger = logging.getLogger("tone.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    token = logs.request_id.set("req-1")
    try:
        logger.warning("готово %d", 3, extra={"job_id": "j-9"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logs.request_id.reset(token)
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "message", "request_id", "job_id")} == {
        "level": "WARNING", "logger": "tone.test-json", "message": "готово 3",
        "request_id": "req-1", "job_id": "j-9",
    }  # fmt: skip
    assert first["time"].endswith("+00:00")
    assert "ValueError: boom" in second["exc"] and "job_id" not in second


def test_text_lines_name_the_request_and_request_ids_are_checked() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text"))
    logs.install(handler, "text")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    token = logs.request_id.set("abc")
    try:
        handler.handle(record)
    finally:
        logs.request_id.reset(token)
    assert stream.getvalue().rstrip().endswith("x: hello [request_id=abc]")
    assert logs.accept_or_make("call-4711.a:b") == "call-4711.a:b"
    for bad in (None, "", "with space", "x" * 129, "кириллица"):
        assert logs.accept_or_make(bad).startswith("req_")
