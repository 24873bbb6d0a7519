"""Packing quantised tensors into artifact bytes: stream encodings, the compressors, the byte accounting.

Streams are grouped by what they hold (all codes, then LQER codes, then scales, then float copies) so
that the compressor sees similar bytes next to each other. Codes go one per byte (int6 in int8
containers compresses best, reference §5.2) or bit-packed; multi-byte streams may be byte-shuffled.
Compressors: zlib (the baseline's), zstd-22, brotli-11 and xz/lzma (the records' progression);
`best` tries each at its top level and keeps the smallest, and the choice is recorded in the file.
Also here: order-0 entropy of the quantised symbols and per-tensor byte tables for reports.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Sequence
from typing import Any

import brotli
import numpy as np
import torch
import zstandard
from torch import Tensor

from pgolf.artifact import COMPRESSORS, FORMAT_VERSION, pack_header, payload_bytes
from pgolf.config import ConfigError
from pgolf.config.quant import COMPRESSOR_LEVELS
from pgolf.quant.layout import QuantizedTensor, TensorPlan, stream_specs

BEST_LEVELS = {"zlib": 9, "zstd": 22, "brotli": 11, "lzma": 9}  # `best` tries these, smallest wins, ties in order
STREAM_GROUPS = (("q",), ("lqer_a", "lqer_b"), ("scale", "lqer_a_scale", "lqer_b_scale"), ("value",))


# ---------------------------------------------------------------- codecs

def compress(data: bytes, name: str, level: int) -> bytes:
    """Compress with one of COMPRESSORS; a bad name or level is a ConfigError naming the flag."""
    if name not in COMPRESSORS:
        raise ConfigError(f"quant.compressor={name!r} is not one of {', '.join(COMPRESSORS)}")
    lo, hi = COMPRESSOR_LEVELS.get(name, (level, level))
    if not lo <= level <= hi:
        raise ConfigError(f"quant.level={level} is out of range for quant.compressor={name} ({lo}-{hi})")
    if name == "zlib":
        return zlib.compress(data, level)
    if name == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    if name == "brotli":
        return brotli.compress(data, quality=level)
    if name == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=level)
    return bytes(data)


def codec_choices(name: str, level: int) -> list[tuple[str, int]]:
    """The (compressor, level) pairs a setting stands for: one, or every codec for `best`."""
    return list(BEST_LEVELS.items()) if name == "best" else [(name, level)]


def compress_best(data: bytes, choices: Sequence[tuple[str, int]]) -> tuple[str, int, bytes]:
    """(name, level, compressed) of the smallest result among `choices` (the first on ties)."""
    best: tuple[str, int, bytes] | None = None
    for name, level in choices:
        out = compress(data, name, level)
        if best is None or len(out) < len(best[2]):
            best = (name, level, out)
    assert best is not None
    return best


# ---------------------------------------------------------------- streams

def shuffle_bytes(data: bytes, size: int) -> bytes:
    """Element bytes regrouped as planes: every element's byte 0, then every byte 1, ..."""
    if size == 1 or not data:
        return data
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, size).T.tobytes()


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned `bits`-bit codes (n,) packed least significant bit first."""
    v = values.astype(np.uint16)  # (n,)
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)  # (n, bits)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def encode_codes(codes: Tensor, plan: TensorPlan, part: str) -> bytes:
    """A code stream's bytes: int8 two's complement or bit-packed, column-major when transposed."""
    _, shape, bits = stream_specs(plan)[part]
    c = codes.to(torch.int8).reshape(shape)
    if part == "q" and plan.transpose:
        c = c.t()
    flat = c.contiguous().reshape(-1).numpy()
    if plan.packing == "bitpack":
        return pack_bits(flat.astype(np.int16) + (1 << (bits - 1)), bits)
    return flat.tobytes()


def encode_floats(t: Tensor, plan: TensorPlan, part: str) -> bytes:
    """A float (or pass-through) stream's bytes in its stored dtype, byte-shuffled when asked."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return shuffle_bytes(raw, t.element_size()) if plan.byte_shuffle else raw


def encode_stream(q: QuantizedTensor, part: str) -> bytes:
    encoding = stream_specs(q.plan)[part][0]
    tensor = q.parts[part]
    return encode_codes(tensor, q.plan, part) if encoding.startswith("codes") else encode_floats(tensor, q.plan, part)


def stream_order(quantized: dict[str, QuantizedTensor]) -> list[tuple[str, str]]:
    """(tensor, part) in payload order: by stream group, then tensor order."""
    order = []
    for group in STREAM_GROUPS:
        for name, q in quantized.items():
            order.extend((name, part) for part in stream_specs(q.plan) if part in group)
    return order


def raw_payload(quantized: dict[str, QuantizedTensor], *, meta: dict[str, Any], model_config: dict[str, Any],
                run_config: dict[str, Any]) -> bytes:
    """The uncompressed payload: canonical JSON header then every stream (deterministic bytes)."""
    order = stream_order(quantized)
    header = {
        "format": FORMAT_VERSION,
        "meta": meta,
        "model_config": model_config,
        "run_config": run_config,
        "tensors": [[name, q.plan.to_dict()] for name, q in quantized.items()],
        "layout": [[name, part] for name, part in order],
    }
    return payload_bytes(header, [encode_stream(quantized[name], part) for name, part in order])


def pack(quantized: dict[str, QuantizedTensor], codec: Sequence[tuple[str, int]], *, meta: dict[str, Any],
         model_config: dict[str, Any], run_config: dict[str, Any]) -> tuple[bytes, str]:
    """(artifact file bytes, compressor used): the payload compressed with the smallest of `codec`."""
    raw = raw_payload(quantized, meta=meta, model_config=model_config, run_config=run_config)
    name, _, payload = compress_best(raw, codec)
    return pack_header(name, raw, payload) + payload, name


# ---------------------------------------------------------------- accounting

def order0_entropy_bits(values: Tensor) -> float:
    """Total order-0 (memoryless) entropy in bits of the symbols in `values`."""
    if values.numel() == 0:
        return 0.0
    _, counts = torch.unique(values.reshape(-1), return_counts=True)
    p = counts.double() / values.numel()
    return float(-(p * torch.log2(p)).sum()) * values.numel()
