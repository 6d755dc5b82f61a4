"""Where a stored recording's playback copies live, so that whoever removes the recording (a delete,
a batch's delete, retention) removes them too: ``<dir of the recording>/.playback/<its name>.<ext>``
(the compressed copy the console plays, and the waveform peaks)."""

from __future__ import annotations

from pathlib import Path

FOLDER = ".playback"


def copy_path(audio_path: str | Path, ext: str) -> Path:
    source = Path(audio_path)
    return source.parent / FOLDER / f"{source.name}.{ext}"


def remove_copies(audio_path: str | Path | None) -> None:
    """Every playback copy of the recording (never raises)."""
    if not audio_path:
        return
    source = Path(audio_path)
    folder = source.parent / FOLDER
    try:
        for copy in folder.glob(f"{source.name}.*"):
            copy.unlink(missing_ok=True)
    except OSError:
        pass
