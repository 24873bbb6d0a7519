"""The one way a benchmark reports: its result as indented JSON on stdout, and the same text written
atomically to `--out` when one is given (so a results file is never half written)."""

from __future__ import annotations

import json
from typing import Any

from pgolf.fileio import write_bytes_atomic


def emit(result: dict[str, Any], out: str = "", indent: int = 2) -> None:
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        write_bytes_atomic(out, (text + "\n").encode("utf-8"))
