"""What general-purpose compressors reach on the validation text: a yardstick printed beside val_bpb."""

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


def val_text_bytes(tokens: np.ndarray, sp: Any) -> bytes:
    """The validation text as the metric counts it: each BOS-delimited document decoded, UTF-8."""
    starts = np.flatnonzero(tokens == BOS_ID)
    bounds = list(starts) + [len(tokens)]
    parts = [sp.decode(tokens[a + 1:b].astype(np.int64).tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
    return "\n".join(parts).encode("utf-8")
