"""The challenge baseline's int8 export (openai/parameter-golf `train_gpt.py`, `quantize_state_dict_int8`),
kept verbatim as the reference that the `int8_per_row` export plan is tested against bit for bit.

Matrices get one int8 scale per row, clipped at a high percentile of |w| so a single outlier does not
stretch the whole row; other large float tensors get one fp32 scale; small float tensors are kept in
float (fp16, or fp32 for the control tensors that gate the residual stream); non-float tensors pass
through. The order of operations mirrors the baseline bit for bit: the row is divided by the fp32
scale, and the scale is rounded to fp16 only for storage (so dequantisation uses the fp16 scale).

The output is a flat name -> tensor dict (`<name>.q`, `<name>.scale`, `<name>`) that safetensors can
store, plus JSON-able metadata saying how to undo each entry.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor

from pgolf.config import QuantConfig
from pgolf.quant.intx import row_quantile
from pgolf.quant.layout import dtype_from_name, dtype_name

QUANT_FORMAT = "int8_clean_per_row_v1"  # the baseline's format tag
QMAX = 127
ROW_SCALE_DTYPE = torch.float16
KEEP_FLOAT_DTYPE = torch.float16

KINDS = ("int8_row", "int8_tensor", "float", "passthrough")


def quantize_rows(w: Tensor, clip_q: float) -> tuple[Tensor, Tensor]:
    """Per-row int8 of a 2-D tensor: (q int8 (R, C), scale fp16 (R,))."""
    w32 = w.float()  # (R, C)
    clip_abs = row_quantile(w32.abs(), clip_q)  # (R,)
    clipped = torch.maximum(torch.minimum(w32, clip_abs[:, None]), -clip_abs[:, None])  # (R, C)
    # an all-zero row would get scale 0; the floor keeps it finite (its q is all zeros anyway)
    scale = (clip_abs / QMAX).clamp_min(1.0 / QMAX)  # (R,) fp32
    q = torch.clamp(torch.round(clipped / scale[:, None]), -QMAX, QMAX).to(torch.int8)  # (R, C)
    return q.contiguous(), scale.to(ROW_SCALE_DTYPE).contiguous()


def quantize_tensor(w: Tensor, clip_q: float) -> tuple[Tensor, Tensor]:
    """Per-tensor int8 of any non-empty tensor: (q int8, same shape; scale fp32, 0-dim)."""
    w32 = w.float()
    flat = w32.abs().reshape(1, -1)  # (1, N)
    clip_abs = float(row_quantile(flat, clip_q)[0].item())
    scale = torch.tensor(clip_abs / QMAX if clip_abs > 0 else 1.0, dtype=torch.float32)  # ()
    q = torch.clamp(torch.round(torch.clamp(w32, -clip_abs, clip_abs) / scale), -QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale


def dequantize_rows(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """Undo `quantize_rows` (with the stored fp16 scale) into `dtype`."""
    return (q.float() * scale.float()[:, None]).to(dtype).contiguous()  # (R, C)


def dequantize_tensor(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """Undo `quantize_tensor` into `dtype`."""
    return (q.float() * scale.float()).to(dtype).contiguous()


def _keep_float(name: str, t: Tensor, keep_fp32: Collection[str]) -> Tensor:
    dtype = torch.float32 if name in keep_fp32 else KEEP_FLOAT_DTYPE
    return t.to(dtype=dtype, copy=True).contiguous()


def _entry(kind: str, t: Tensor) -> dict[str, Any]:
    return {"kind": kind, "dtype": dtype_name(t.dtype), "shape": list(t.shape)}


def quantize_state_dict_int8(state: dict[str, Tensor], cfg: QuantConfig,
                             keep_fp32: Collection[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Quantise a state dict the way the baseline does; returns (flat tensors, JSON-able meta).

    `keep_fp32` names the small float tensors kept in fp32 (the control tensors, from the role table).
    Tensors are contiguous CPU copies (nothing aliases `state`)."""
    if cfg.scheme != "int8_per_row":
        raise ValueError(f"quant.scheme={cfg.scheme!r} is not handled by the int8 exporter")
    clip_q = cfg.clip_percentile / 100.0
    tensors: dict[str, Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu")
        if not t.is_floating_point():
            kind, out = "passthrough", {name: t.clone().contiguous()}
        elif t.numel() <= cfg.keep_float_max_numel:
            kind, out = "float", {name: _keep_float(name, t, keep_fp32)}
        elif t.ndim == 2:
            q, scale = quantize_rows(t, clip_q)
            kind, out = "int8_row", {f"{name}.q": q, f"{name}.scale": scale}
        else:
            q, scale = quantize_tensor(t, clip_q)
            kind, out = "int8_tensor", {f"{name}.q": q, f"{name}.scale": scale}
        clash = sorted(set(out) & set(tensors))
        if clash:
            raise ValueError(f"state dict name {name!r} collides with stored tensor {clash[0]!r}")
        tensors.update(out)
        entries[name] = _entry(kind, t)
    meta = {
        "format": QUANT_FORMAT,
        "scheme": cfg.scheme,
        "clip_percentile": cfg.clip_percentile,
        "keep_float_max_numel": cfg.keep_float_max_numel,
        "keep_fp32": sorted(keep_fp32),
        "tensors": entries,
    }
    return tensors, meta


def _restore(name: str, entry: dict[str, Any], tensors: dict[str, Tensor]) -> Tensor:
    kind, dtype, shape = entry["kind"], dtype_from_name(entry["dtype"]), list(entry["shape"])
    if kind == "int8_row":
        out = dequantize_rows(tensors[f"{name}.q"], tensors[f"{name}.scale"], dtype)
    elif kind == "int8_tensor":
        out = dequantize_tensor(tensors[f"{name}.q"], tensors[f"{name}.scale"], dtype)
    elif kind in ("float", "passthrough"):
        out = tensors[name].to(dtype).contiguous()
    else:
        raise ValueError(f"tensor {name!r} has unknown kind {kind!r}")
    if list(out.shape) != shape:
        raise ValueError(f"tensor {name!r} has shape {list(out.shape)}, metadata says {shape}")
    return out


def dequantize_state_dict_int8(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    """Rebuild the state dict (original names, dtypes and shapes) from `quantize_state_dict_int8`'s output.

    Raises KeyError/ValueError when tensors and metadata disagree."""
    return {name: _restore(name, entry, tensors) for name, entry in meta["tensors"].items()}


def quant_stats(state: dict[str, Tensor], tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Counts and reconstruction errors per kind (JSON-able), for logs and reports."""
    restored = dequantize_state_dict_int8(tensors, meta)
    per_kind: dict[str, dict[str, Any]] = {}
    for name, entry in meta["tensors"].items():
        original = state[name].detach().to("cpu")
        s = per_kind.setdefault(entry["kind"], {"num_tensors": 0, "num_params": 0, "max_abs_error": 0.0,
                                                "sum_abs_error": 0.0})
        s["num_tensors"] += 1
        s["num_params"] += int(original.numel())
        if original.is_floating_point() and original.numel():
            err = (restored[name].double() - original.double()).abs()
            s["max_abs_error"] = max(s["max_abs_error"], float(err.max()))
            s["sum_abs_error"] += float(err.sum())
    for s in per_kind.values():
        s["mean_abs_error"] = s.pop("sum_abs_error") / max(s["num_params"], 1)

    def count(*kinds: str) -> int:
        return sum(per_kind[k]["num_params"] for k in kinds if k in per_kind)

    return {
        "num_int8_params": count("int8_row", "int8_tensor"),
        "num_float_params": count("float"),
        "num_passthrough_params": count("passthrough"),
        "stored_tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "per_kind": per_kind,
    }
