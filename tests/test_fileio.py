"""Atomic writes leave no temporary behind, and a later run removes the temporaries of killed writers
without touching a write still in progress."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pgolf.fileio import remove_orphan_temps, write_bytes_atomic


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_write_is_whole_and_leaves_nothing_else(tmp_path: Path) -> None:
    write_bytes_atomic(tmp_path / "a" / "x.bin", b"12", b"34")
    assert (tmp_path / "a/x.bin").read_bytes() == b"1234"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.bin"]


def test_orphans_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    orphan = run / f".final_model.int8.ptz.{dead_pid()}.abc123.tmp"
    live = run / f".summary.json.{os.getpid()}.def456.tmp"
    kept = run / "notes.tmp"
    for p in (orphan, live, kept):
        p.write_bytes(b"partial")
    assert remove_orphan_temps(tmp_path / "runs") == [orphan]
    assert not orphan.exists() and live.exists() and kept.exists()
