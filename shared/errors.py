"""The one coded-error base every layer shares: the engine's ``ToneError``, the SSRF guard's
``UrlError``, live sessions' ``SessionError``, the API's ``ApiError`` and the WebSocket close errors.

Each carries a machine-readable ``code``, a ``message`` for people and, where the raiser knows it, an
HTTP ``status``. The API turns any of them into ``{"error": {"code", "message"}}`` in one handler
(:mod:`api.errors`), the status from the error or else from the code's row in its status table; a
WebSocket closes with the code's close code; a worker fails the job with the code. Dependency-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

E = TypeVar("E", bound="CodedError")


class CodedError(Exception):
    """An error with a machine-readable ``code``, a ``message`` and optionally an HTTP ``status``."""

    code: str = "error"
    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    def public_message(self, path: object, shown: str) -> str:
        """The message with a server-side file path replaced by what the client knows it as."""
        return self.message.replace(str(path), shown) if path else self.message

    def hiding(self: E, path: object, shown: str) -> E:
        """This error, its message showing ``shown`` where it named the server-side ``path``."""
        self.message = self.public_message(path, shown)
        self.args = (self.message,)
        return self

    def at(self: E, where: str) -> E:
        """This error, its message naming where in the request it was found (``items[3].audio_url``)."""
        self.message = f"{where}: {self.message}"
        self.args = (self.message,)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}
