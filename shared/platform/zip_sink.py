"""Where ``zipfile`` writes a ZIP that is sent as it is made (the batch results' download, the
``tone-platform batch`` upload): a write-only file with no ``tell``, so ``zipfile`` writes as to a
pipe (every entry's sizes in a data descriptor after its data), and whatever it wrote is taken in
pieces."""

from __future__ import annotations


class PipeSink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        """What was written since the last take."""
        out, self.parts = b"".join(self.parts), []
        return out
