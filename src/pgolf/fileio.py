"""Atomic file writes: every file pgolf produces appears whole or not at all.

A write goes to `.NAME.PID.RANDOM.tmp` in the target folder and is renamed into place. A process
killed mid-write leaves that temporary behind; `remove_orphan_temps` deletes the ones whose writer
is no longer alive (the pid in the name), so a later run cleans up without touching a live write.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_TEMP = re.compile(r"\..+\.(\d+)\.[^.]+\.tmp")


def write_bytes_atomic(path: str | os.PathLike[str], *chunks: bytes) -> Path:
    """Write the chunks to a temporary name in the same folder, then rename it over `path`: readers see
    the old file or the new one, never half of one, and a failed write leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_temps(folder: str | os.PathLike[str], depth: int = 1) -> list[Path]:
    """Delete temporaries of interrupted atomic writes in `folder` (and `depth` levels below) whose
    writing process has exited; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if entry.is_dir() and depth > 0:
            removed += remove_orphan_temps(entry, depth - 1)
        elif (m := _TEMP.fullmatch(entry.name)) and entry.is_file() and not _alive(int(m.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
