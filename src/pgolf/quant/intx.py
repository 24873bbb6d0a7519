"""Round-to-nearest symmetric intN quantisers (N = 2..8) and the clip rules that choose their scales.

A row (or a group of `group_size` columns) gets one scale `s = clip / qmax`, codes
`q = clamp(round(clamp(w, -clip, clip) / s), -qmax, qmax)`. The clip comes from a rule:

- percentile: a quantile of |w| per row (the challenge baseline's INT8_CLIP_PERCENTILE);
- gptq_lite: the best of several quantiles {0.999, 0.9995, 0.9999, 0.99999, 1.0} per row, by
  reconstruction error (PR #414, reference §5.2);
- sdclip: `k * std(row)` (PR #1394): no search, and k sets the entropy, hence the bytes, directly;
  several k values are searched per row like gptq_lite's quantiles.

The baseline's own arithmetic is kept as a plan option (`rounding = "fp32"`, floor 1/127): divide by
the fp32 scale and round the scale to fp16 only for storage. New plans divide by the stored scale,
so the dequantised value is exactly what the rounding aimed at (and GPTQ's error feedback is exact).
`fake_quantize` is the export's own arithmetic for late QAT.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.quant.layout import TensorPlan, dequantize, dtype_from_name, qmax

QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses larger inputs
FP16_MAX = 65504.0


def _sorted_quantile_rows(a: Tensor, q: float) -> Tensor:
    """torch.quantile(a, q, dim=1) (linear interpolation) from one sort: for rows too long for torch.quantile,
    and under compilation, where torch.quantile fails on symbolic shapes in some torch versions (2.11 on CUDA,
    compiled late QAT); no data-dependent Python, so a compiled forward traces it whole.

    Same arithmetic as torch: the rank q*(n-1) is computed in the input dtype, then the two neighbouring
    order statistics are lerped by its fractional part."""
    n = a.shape[1]
    rank = torch.tensor(q, dtype=a.dtype, device=a.device) * (n - 1)  # ()
    lo, hi = rank.floor(), rank.ceil()  # ()
    ordered = a.sort(dim=1).values  # (R, n)
    below = ordered.index_select(1, lo.long().view(1)).squeeze(1)  # (R,)
    above = ordered.index_select(1, hi.long().view(1)).squeeze(1)  # (R,)
    return torch.lerp(below, above, rank - lo)


def row_quantile(a: Tensor, q: float) -> Tensor:
    """Per-row quantile of a float32 matrix, equal to torch.quantile(a, q, dim=1) at any size."""
    num_rows, row_len = a.shape
    if row_len > QUANTILE_MAX_NUMEL or torch.compiler.is_compiling():
        return _sorted_quantile_rows(a, q)
    rows_per_chunk = max(1, QUANTILE_MAX_NUMEL // max(row_len, 1))
    # rows are independent, so chunking gives the same values as one call
    return torch.cat([torch.quantile(chunk, q, dim=1) for chunk in a.split(rows_per_chunk)])  # (R,)


def as_groups(w: Tensor, plan: TensorPlan) -> Tensor:
    """A 2-D tensor (R, C) as one row per scale: (R * G, C / G), float32."""
    return w.float().reshape(plan.rows * plan.num_groups, -1)


def clip_candidates(rows: Tensor, plan: TensorPlan) -> Tensor:
    """Candidate clip values (K, N) for N rows (N, g) under the plan's clip rule."""
    a = rows.abs()  # (N, g)
    if plan.clip == "sdclip":
        std = rows.std(dim=1, correction=0)  # (N,)
        return torch.stack([k * std for k in plan.clip_values])  # (K, N)
    if plan.clip == "none":
        return a.amax(dim=1)[None]  # (1, N)
    return torch.stack([row_quantile(a, q) for q in plan.clip_values])  # (K, N)


def scales_from_clip(clip: Tensor, plan: TensorPlan) -> tuple[Tensor, Tensor]:
    """(scale used for rounding, fp32; scale as stored, plan.scale_dtype) for clip values of any shape."""
    qm = qmax(plan.bits)
    s32 = (clip / qm).clamp_min(plan.scale_floor)
    if plan.rounding == "fp32":  # the baseline: round with the fp32 scale, store it rounded
        return s32, s32.to(dtype_from_name(plan.scale_dtype))
    stored = s32.clamp_max(FP16_MAX).to(dtype_from_name(plan.scale_dtype))
    return stored.float(), stored


def round_codes(rows: Tensor, clip: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Codes (N, g) int8 of rows (N, g) for per-row clip (N,) and rounding scale (N,)."""
    qm = qmax(bits)
    clipped = torch.maximum(torch.minimum(rows, clip[:, None]), -clip[:, None])  # (N, g)
    return torch.clamp(torch.round(clipped / scale[:, None]), -qm, qm).to(torch.int8)  # (N, g)


def pick_per_row(errors: Tensor) -> Tensor:
    """Index (N,) of the lowest error per row among K candidates (K, N); ties keep the first."""
    return errors.argmin(dim=0)


def quantize_rows_rtn(w: Tensor, plan: TensorPlan) -> dict[str, Tensor]:
    """Round-to-nearest codes and scales of a 2-D tensor: {"q": (R, C) int8, "scale": (R, G)}.

    With several clip candidates each row (or group) keeps the one with the lowest squared error."""
    rows = as_groups(w, plan)  # (N, g)
    clips = clip_candidates(rows, plan)  # (K, N)
    best_q: Tensor | None = None
    best_scale: Tensor | None = None
    best_err: Tensor | None = None
    for clip in clips:
        s_round, s_stored = scales_from_clip(clip, plan)  # (N,), (N,)
        q = round_codes(rows, clip, s_round, plan.bits)  # (N, g)
        err = (q.float() * s_stored.float()[:, None] - rows).square().sum(dim=1)  # (N,)
        if best_err is None:
            best_q, best_scale, best_err = q, s_stored, err
            continue
        better = err < best_err  # (N,)
        best_q = torch.where(better[:, None], q, best_q)
        best_scale = torch.where(better, s_stored, best_scale)
        best_err = torch.minimum(err, best_err)
    assert best_q is not None and best_scale is not None
    return {"q": best_q.reshape(plan.shape).contiguous(),
            "scale": best_scale.reshape(plan.rows, plan.num_groups).contiguous()}


def quantize_tensor_rtn(w: Tensor, plan: TensorPlan) -> dict[str, Tensor]:
    """One fp32 scale for a whole tensor (the baseline's rule for non-matrix floats)."""
    w32 = w.float()
    qm = qmax(plan.bits)
    clip_abs = float(row_quantile(w32.abs().reshape(1, -1), plan.clip_values[0])[0].item())
    scale = torch.tensor(clip_abs / qm if clip_abs > 0 else 1.0, dtype=torch.float32)  # ()
    q = torch.clamp(torch.round(torch.clamp(w32, -clip_abs, clip_abs) / scale), -qm, qm).to(torch.int8)
    return {"q": q.contiguous(), "scale": scale}


def float_parts(w: Tensor, plan: TensorPlan) -> dict[str, Tensor]:
    """A float or pass-through tensor as its stored copy."""
    return {"value": w.detach().to(dtype_from_name(plan.store_dtype), copy=True).contiguous()}


def quantize_rtn(w: Tensor, plan: TensorPlan) -> dict[str, Tensor]:
    """The stored parts of any tensor under its plan, by round to nearest (no GPTQ, no LQER), on w's device."""
    w = w.detach()
    if plan.kind == "intx_row":
        return quantize_rows_rtn(w, plan)
    if plan.kind == "intx_tensor":
        return quantize_tensor_rtn(w, plan)
    return float_parts(w, plan)


@torch.no_grad()
def fake_quantize(w: Tensor, plan: TensorPlan) -> Tensor:
    """Quantise then dequantise `w` with the export's exact arithmetic (round to nearest); no gradient.

    Returns a tensor of w's dtype on w's device (computed there: QAT calls it every step), equal to what
    the artifact restores for a plan without GPTQ, LQER or pruning, so late QAT trains against the
    export it will get."""
    plan_here = plan if plan.dtype == str(w.dtype).removeprefix("torch.") else _with_dtype(plan, w.dtype)
    return dequantize(plan_here, quantize_rtn(w, plan_here))


def _with_dtype(plan: TensorPlan, dtype: torch.dtype) -> TensorPlan:
    from dataclasses import replace

    return replace(plan, dtype=str(dtype).removeprefix("torch."))
