"""LQER: low-rank corrections of the worst-quantised tensors (PR #1797; reference §5.2).

After quantisation, for the `top_k` tensors with the largest reconstruction error ‖W - Ŵ‖_F, the
error E = W - Ŵ is approximated by its rank-r SVD, A = U_r S_r (R, r) and B = V_rᵀ (r, C). Both factors
are quantised asymmetrically over the full two's complement range: A with one scale
`max|A| / (2^(a-1) - 0.5)` (int2 by default), B with one scale per group of columns (int4, groups of
64). The loader restores W = Ŵ + Â B̂.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from pgolf.quant.layout import TensorPlan, dequantize, dtype_from_name

MIN_SCALE = 2.0 ** -14  # smallest normal fp16: an all-zero factor still gets a positive, finite scale


def full_range_codes(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Codes in [-2^(bits-1), 2^(bits-1) - 1] of x for a broadcastable scale."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return torch.clamp(torch.round(x / scale), lo, hi).to(torch.int8)


def factor_scale(x: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    """max|x| / (2^(bits-1) - 0.5) over the last dimension, floored and rounded to the stored dtype."""
    half_range = (1 << (bits - 1)) - 0.5
    return (x.abs().amax(dim=-1) / half_range).clamp(MIN_SCALE, 65504.0).to(dtype)


def lqer_parts(error: Tensor, plan: TensorPlan) -> dict[str, Tensor]:
    """Quantised rank-r factors of an error matrix (R, C) under an intx_row plan with lqer_rank > 0."""
    r, g = plan.lqer_rank, plan.lqer_group_size
    u, s, vh = torch.linalg.svd(error.double(), full_matrices=False)  # (R, k), (k,), (k, C)
    a = (u[:, :r] * s[:r][None, :]).float()  # (R, r)
    b = vh[:r].float()  # (r, C)
    sdtype = dtype_from_name(plan.scale_dtype)
    a_scale = factor_scale(a.reshape(1, -1), plan.lqer_a_bits, sdtype)  # (1,)
    a_codes = full_range_codes(a, a_scale.float(), plan.lqer_a_bits)  # (R, r)
    groups = b.reshape(r, plan.cols // g, g)  # (r, G, g)
    b_scale = factor_scale(groups, plan.lqer_b_bits, sdtype)  # (r, G)
    b_codes = full_range_codes(groups, b_scale.float()[..., None], plan.lqer_b_bits).reshape(r, plan.cols)  # (r, C)
    return {"lqer_a": a_codes.contiguous(), "lqer_a_scale": a_scale.contiguous(),
            "lqer_b": b_codes.contiguous(), "lqer_b_scale": b_scale.contiguous()}


def lqer_plan(plan: TensorPlan, rank: int, a_bits: int, b_bits: int, group_size: int) -> TensorPlan | None:
    """The plan with an LQER correction, or None when the tensor cannot take one (shape, groups)."""
    if plan.kind != "intx_row" or plan.cols % group_size or rank > min(plan.shape):
        return None
    return replace(plan, lqer_rank=rank, lqer_a_bits=a_bits, lqer_b_bits=b_bits, lqer_group_size=group_size)


def without_lqer(parts: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in parts.items() if not k.startswith("lqer_")}


def add_lqer(state: dict[str, Tensor], plans: dict[str, TensorPlan], parts: dict[str, dict[str, Tensor]], *,
             rank: int, top_k: int, a_bits: int, b_bits: int, group_size: int,
             only: list[str] | None = None) -> tuple[dict[str, TensorPlan], dict[str, dict[str, Tensor]]]:
    """Plans and parts with LQER corrections on the `top_k` intx_row tensors of largest ‖W - Ŵ‖_F
    (or exactly on `only`, when given, to keep the choice fixed while pruning changes Ŵ)."""
    base_plans = {n: replace(p, lqer_rank=0) for n, p in plans.items()}
    base_parts = {n: without_lqer(p) for n, p in parts.items()}
    errors: dict[str, Tensor] = {}
    for name, plan in base_plans.items():
        if lqer_plan(plan, rank, a_bits, b_bits, group_size) is None or (only is not None and name not in only):
            continue
        errors[name] = state[name].detach().float().cpu() - dequantize(plan, base_parts[name]).float()  # (R, C)
    chosen = only if only is not None else sorted(errors, key=lambda n: (-float(errors[n].norm()), n))[:top_k]
    new_plans, new_parts = dict(base_plans), dict(base_parts)
    for name in chosen:
        if name not in errors:
            continue
        plan = lqer_plan(base_plans[name], rank, a_bits, b_bits, group_size)
        assert plan is not None
        new_plans[name] = plan
        new_parts[name] = {**base_parts[name], **lqer_parts(errors[name], plan)}
    return new_plans, new_parts
