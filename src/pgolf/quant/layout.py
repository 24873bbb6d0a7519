"""How quantised tensors are stored and restored: the per-tensor plan, its byte streams, dequantisation.

This is the loading side of the export (it ships with the scorer; the quantisers, GPTQ and the
fitting live in the writer modules beside it). A `TensorPlan` says what a stored tensor is: its kind
(symmetric intN with one scale per row or per column group, one scale for the whole tensor, a float
copy, or a pass-through), its bits, scale dtype and storage encoding, and an optional LQER low-rank
correction (`W = W_hat + A_hat @ B_hat`, reference §5.2, PR #1797). Every plan is stored in the artifact
and read back strictly; the byte length of each stream follows from the plan, so a stream whose size
disagrees with its plan is refused before it is decoded.

Encodings: codes are int8 two's complement bytes or bit-packed (`code + 2^(bits-1)` in `bits` bits,
least significant bit first), optionally stored column by column; multi-byte streams (scales, floats)
may be byte-shuffled (all first bytes, then all second bytes, ...), the transform records use before
brotli (reference §5.2, "BSHF").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Kind = Literal["intx_row", "intx_tensor", "float", "passthrough"]
DtypeName = Literal["float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"]

# Dtypes an artifact may name; a lookup table rather than getattr(torch, name) on file contents.
DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
SCALE_DTYPES = ("float16", "float32")
MAX_DIM = 1 << 31  # no stored dimension is larger; keeps size arithmetic far from overflow


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `"float32"`."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of `dtype_name` for the dtypes an artifact may hold; ValueError otherwise."""
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}")
    return DTYPES[name]


def itemsize(name: str) -> int:
    return torch.empty((), dtype=dtype_from_name(name)).element_size()


def qmax(bits: int) -> int:
    """Largest code of symmetric intN: codes lie in [-qmax, qmax]."""
    return (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class TensorPlan:
    """What one stored tensor is and how it was made (the writer fills it; the loader checks and uses it)."""

    kind: Kind
    """intx_row: codes (R, C) with scales (R, groups); intx_tensor: codes with one fp32 scale; float: a float
    copy in store_dtype; passthrough: stored as is (non-float tensors)."""
    shape: tuple[int, ...]
    """Shape of the restored tensor."""
    dtype: DtypeName
    """Dtype of the restored tensor."""
    role: str = ""
    """Role of the parameter (`pgolf.model.roles`), for reports."""
    bits: int = 0
    """intx kinds: code bits (2..8); 0 otherwise."""
    clip: Literal["percentile", "gptq_lite", "sdclip", "none"] = "none"
    """How the clip (hence the scale) of each row was chosen."""
    clip_values: tuple[float, ...] = ()
    """Candidates of the clip rule: quantiles of |w| (percentile, gptq_lite) or k of SDClip."""
    scale_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the scales."""
    scale_floor: float = 0.0
    """Smallest scale; the baseline floors per-row scales at 1/127."""
    rounding: Literal["fp32", "stored"] = "stored"
    """Divide by the fp32 scale before rounding it for storage (the baseline's order) or by the stored scale."""
    group_size: int = 0
    """Columns per scale (0 = the whole row)."""
    store_dtype: DtypeName = "float32"
    """float and passthrough kinds: the dtype stored."""
    packing: Literal["int8", "bitpack"] = "int8"
    """Encoding of integer codes."""
    transpose: bool = False
    """intx_row: codes stored column by column."""
    byte_shuffle: bool = False
    """Multi-byte streams stored as byte planes."""
    gptq: bool = False
    """Codes chosen by full-Hessian GPTQ (information; loading ignores it)."""
    lqer_rank: int = 0
    """Rank of the LQER correction (0 = none)."""
    lqer_a_bits: int = 2
    """Bits of LQER's left factor A (R, rank), one scale."""
    lqer_b_bits: int = 4
    """Bits of LQER's right factor B (rank, C), one scale per lqer_group_size columns."""
    lqer_group_size: int = 64
    """Columns per scale group of B."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_int(self) -> bool:
        return self.kind in ("intx_row", "intx_tensor")

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def num_groups(self) -> int:
        """Scales per row of an intx_row tensor."""
        return self.cols // self.group_size if self.group_size else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["clip_values"] = list(self.shape), list(self.clip_values)
        return d

    def validate(self) -> None:
        """ValueError naming the field when the plan is not internally consistent."""
        _check(all(0 <= n < MAX_DIM for n in self.shape), f"shape {list(self.shape)} has a dimension outside 0..2^31")
        if self.is_int:
            _check(self.dtype in FLOAT_DTYPES, f"dtype {self.dtype} of a quantised tensor is not a float dtype")
            _check(2 <= self.bits <= 8, f"bits={self.bits} must be in 2..8")
            _check(math.isfinite(self.scale_floor) and self.scale_floor >= 0, f"scale_floor={self.scale_floor}")
        else:
            _check(self.bits == 0 and self.lqer_rank == 0, "a float or passthrough tensor has bits or lqer_rank")
            floaty = self.kind == "float"
            _check((self.store_dtype in FLOAT_DTYPES) == floaty and (self.dtype in FLOAT_DTYPES) == floaty,
                   f"kind {self.kind} with dtype {self.dtype} stored as {self.store_dtype}")
            _check(floaty or self.store_dtype == self.dtype, "a passthrough tensor changes dtype")
        if self.kind == "intx_row":
            _check(len(self.shape) == 2, f"intx_row needs a 2-D shape, got {list(self.shape)}")
            _check(self.group_size >= 0 and (self.group_size == 0 or self.cols % self.group_size == 0),
                   f"group_size={self.group_size} does not divide {self.cols} columns")
        else:
            _check(self.group_size == 0 and not self.transpose, f"{self.kind} has group_size or transpose")
        if self.kind == "intx_tensor":
            _check(self.scale_dtype == "float32" and self.lqer_rank == 0, "intx_tensor needs one fp32 scale, no LQER")
        if self.lqer_rank:
            _check(self.kind == "intx_row" and 0 < self.lqer_rank <= min(self.shape), f"lqer_rank={self.lqer_rank}")
            _check(2 <= self.lqer_a_bits <= 8 and 2 <= self.lqer_b_bits <= 8, "lqer bits must be in 2..8")
            _check(self.lqer_group_size >= 1 and self.cols % self.lqer_group_size == 0,
                   f"lqer_group_size={self.lqer_group_size} does not divide {self.cols} columns")


@dataclass
class QuantizedTensor:
    """A tensor as stored: its plan and its parts (codes, scales, LQER factors or a float copy)."""

    plan: TensorPlan
    parts: dict[str, Tensor]

    def restore(self) -> Tensor:
        return dequantize(self.plan, self.parts)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def lqer_groups(plan: TensorPlan) -> int:
    return plan.cols // plan.lqer_group_size


# ---------------------------------------------------------------- streams

def stream_specs(plan: TensorPlan) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Part name -> (encoding, shape, bits) of each stream of a tensor; encoding is "codes",
    "codes_full" (the full two's complement range, for LQER factors) or a dtype name."""
    if plan.kind in ("float", "passthrough"):
        return {"value": (plan.store_dtype, plan.shape, 0)}
    if plan.kind == "intx_tensor":
        return {"q": ("codes", plan.shape, plan.bits), "scale": ("float32", (), 0)}
    specs = {"q": ("codes", plan.shape, plan.bits), "scale": (plan.scale_dtype, (plan.rows, plan.num_groups), 0)}
    if plan.lqer_rank:
        r = plan.lqer_rank
        specs.update({
            "lqer_a": ("codes_full", (plan.rows, r), plan.lqer_a_bits),
            "lqer_a_scale": (plan.scale_dtype, (1,), 0),
            "lqer_b": ("codes_full", (r, plan.cols), plan.lqer_b_bits),
            "lqer_b_scale": (plan.scale_dtype, (r, lqer_groups(plan)), 0),
        })
    return specs


def stream_nbytes(plan: TensorPlan, part: str) -> int:
    """Exact stored byte length of one stream."""
    encoding, shape, bits = stream_specs(plan)[part]
    n = math.prod(shape)
    if encoding.startswith("codes"):
        return (n * bits + 7) // 8 if plan.packing == "bitpack" else n
    return n * itemsize(encoding)


def unshuffle_bytes(data: bytes, size: int) -> bytes:
    """Inverse of the byte shuffle: planes of the i-th byte of every element back to elements."""
    if size == 1 or not data:
        return data
    planes = np.frombuffer(data, dtype=np.uint8).reshape(size, -1)  # (size, n)
    return planes.T.tobytes()


def unpack_bits(data: bytes, n: int, bits: int) -> np.ndarray:
    """`n` unsigned `bits`-bit codes from LSB-first packed bytes, as int16."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * bits]  # (n*bits,)
    weights = (1 << np.arange(bits, dtype=np.int16))  # (bits,)
    return (flat.reshape(n, bits).astype(np.int16) * weights).sum(axis=1, dtype=np.int16)  # (n,)


class StreamError(ValueError):
    """A stored stream whose values are not what its plan says (message names the part)."""


def decode_codes(data: bytes, plan: TensorPlan, part: str) -> Tensor:
    """Integer codes of a stream as an int8 tensor of the stream's shape, range-checked."""
    encoding, shape, bits = stream_specs(plan)[part]
    n = math.prod(shape)
    if plan.packing == "bitpack":
        values = unpack_bits(data, n, bits) - (1 << (bits - 1))  # (n,)
    else:
        values = np.frombuffer(data, dtype=np.int8).astype(np.int16)  # (n,)
    hi = qmax(bits) if encoding == "codes" else (1 << (bits - 1)) - 1
    lo = -hi if encoding == "codes" else -(1 << (bits - 1))
    if n and (int(values.min()) < lo or int(values.max()) > hi):
        raise StreamError(f"{part} holds codes outside [{lo}, {hi}] for {bits} bits")
    codes = torch.from_numpy(values.astype(np.int8))
    if part == "q" and plan.transpose:
        return codes.view(shape[1], shape[0]).t().contiguous()  # (R, C)
    return codes.view(shape)


def decode_floats(data: bytes, plan: TensorPlan, part: str) -> Tensor:
    """A float (or pass-through) stream as a tensor of its dtype and shape; floats must be finite."""
    dtype_text, shape, _ = stream_specs(plan)[part]
    dtype = dtype_from_name(dtype_text)
    if not data:
        return torch.empty(shape, dtype=dtype)
    raw = unshuffle_bytes(data, itemsize(dtype_text)) if plan.byte_shuffle else data
    if dtype == torch.bool and max(raw) > 1:
        raise StreamError(f"{part} holds bool bytes other than 0 and 1")
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).view(shape)
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise StreamError(f"{part} holds non-finite values")
    if part != "value" and t.numel() and not bool((t > 0).all()):
        raise StreamError(f"{part} holds scales that are not positive")
    return t


def decode_parts(plan: TensorPlan, streams: dict[str, bytes]) -> dict[str, Tensor]:
    """Every stream of a tensor decoded and checked (codes in range, scales finite and positive)."""
    out = {}
    for part, (encoding, _, _) in stream_specs(plan).items():
        decode = decode_codes if encoding.startswith("codes") else decode_floats
        out[part] = decode(streams[part], plan, part)
    return out


# ---------------------------------------------------------------- dequantisation

def expand_scales(scale: Tensor, plan: TensorPlan) -> Tensor:
    """Per-row or per-group scales (R, G) as one scale per element (R, C), float32."""
    s = scale.float()  # (R, G)
    return s.repeat_interleave(plan.cols // s.shape[1], dim=1) if s.shape[1] > 1 else s.expand(plan.rows, plan.cols)


def lqer_correction(parts: dict[str, Tensor], plan: TensorPlan) -> Tensor:
    """A_hat @ B_hat (R, C) in float32 from the stored LQER codes and scales."""
    a = parts["lqer_a"].float() * parts["lqer_a_scale"].float()  # (R, r)
    b_scale = parts["lqer_b_scale"].float().repeat_interleave(plan.lqer_group_size, dim=1)  # (r, C)
    b = parts["lqer_b"].float() * b_scale  # (r, C)
    return a @ b  # (R, C)


def dequantize(plan: TensorPlan, parts: dict[str, Tensor]) -> Tensor:
    """The restored tensor (plan.dtype, plan.shape) from its decoded parts."""
    dtype = dtype_from_name(plan.dtype)
    if plan.kind in ("float", "passthrough"):
        return parts["value"].to(dtype).reshape(plan.shape).contiguous()
    if plan.kind == "intx_tensor":
        return (parts["q"].float() * parts["scale"].float()).to(dtype).contiguous()
    w = parts["q"].float() * expand_scales(parts["scale"], plan)  # (R, C)
    if plan.lqer_rank:
        w = w + lqer_correction(parts, plan)
    return w.to(dtype).contiguous()
