"""What general-purpose compressors reach on the validation text: a yardstick printed beside val_bpb.

Compressing the whole FineWeb validation text (~150 MB) with xz -9e would take minutes, so the figure
is computed on at most `eval.reference_bytes` bytes of whole documents from the start of the
validation stream (the CPU track's 0.8 MB fits whole), labelled with the sample's size; 0 turns it off.
"""

from __future__ import annotations

import lzma
from typing import Any

import brotli
import numpy as np

from pgolf.tokenizer import BOS_ID


def reference_compression_bpb(text: bytes) -> dict[str, float]:
    """Bits per byte that general-purpose compressors reach on the same validation text."""
    return {
        "xz": 8.0 * len(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME)) / max(len(text), 1),
        "brotli": 8.0 * len(brotli.compress(text, quality=11)) / max(len(text), 1),
    }


def val_text_bytes(tokens: np.ndarray, sp: Any, max_bytes: int | None = None) -> bytes:
    """The validation text as the metric counts it: each BOS-delimited document decoded, UTF-8; with
    `max_bytes`, only the whole documents from the start that fit in it (at least one)."""
    return _documents(tokens, sp, max_bytes)[0]


def _documents(tokens: np.ndarray, sp: Any, max_bytes: int | None) -> tuple[bytes, bool]:
    """(text of the leading documents that fit in max_bytes, whether that is every document)."""
    starts = np.flatnonzero(tokens == BOS_ID)
    bounds = list(starts) + [len(tokens)]
    parts: list[bytes] = []
    total = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        doc = sp.decode(tokens[a + 1:b].astype(np.int64).tolist()).encode("utf-8")
        if max_bytes is not None and parts and total + len(doc) + 1 > max_bytes:
            return b"\n".join(parts), False
        parts.append(doc)
        total += len(doc) + 1
    return b"\n".join(parts), True


def reference_figures(tokens: np.ndarray, sp: Any, max_bytes: int) -> dict[str, Any] | None:
    """xz and brotli bits per byte on a bounded sample of the validation text, with the sample's size
    and whether it is the whole text; None when switched off (max_bytes 0)."""
    if max_bytes <= 0:
        return None
    sample, whole = _documents(tokens, sp, max_bytes)
    return {**reference_compression_bpb(sample), "sample_bytes": len(sample), "whole_text": whole}
