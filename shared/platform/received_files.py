"""The names of what the API writes into the audio directory while it receives a request, shared
with whoever must recognise them later: beat's sweep of the files a process killed mid-request
left behind (``worker.retention.sweep_strays``) removes exactly these and nothing else.

``<audio dir>/<name>.part``                  an upload being written (``api.uploads.FileSink``)
``<audio dir>/batches/<uuid>.upload``        an archive received, not yet handed on
``<audio dir>/batches/<uuid>.upload.part``   the same being written
``<audio dir>/batches/<uuid>.upload.part.tar``  a compressed tar's decompressed sidecar
``<audio dir>/batches/<batch id>.archive``   an archive a batch still reads (``options.archive``)
"""

from __future__ import annotations

import uuid
from pathlib import Path

ARCHIVES = "batches"  # the audio directory's folder where archives are received and kept
PARTIAL = ".part"  # appended to a file's name while it is written
SIDECAR = ".tar"  # appended to a compressed tar's partial upload: its decompressed tar
UPLOAD = ".upload"  # a received archive
KEPT = ".archive"  # a batch's archive, kept for its reader


def partial(dest: Path) -> Path:
    """Where ``dest`` is written until it is complete."""
    return dest.with_name(dest.name + PARTIAL)


def sidecar(part: Path) -> Path:
    """The decompressed tar beside a compressed tar's partial upload ``part``."""
    return part.with_name(part.name + SIDECAR)


def received_archive(audio_dir: Path) -> Path:
    """A new name for an archive being received."""
    return audio_dir / ARCHIVES / f"{uuid.uuid4()}{UPLOAD}"


def kept_archive(received: Path, batch_id: uuid.UUID) -> Path:
    """The name a received archive is kept under while its batch ``batch_id`` reads it."""
    return received.with_name(f"{batch_id}{KEPT}")
