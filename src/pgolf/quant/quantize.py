"""Stage 2 of the export: every tensor of a state dict quantised under its plan.

Round to nearest (`pgolf.quant.intx`) by default; full-Hessian GPTQ (`pgolf.quant.gptq`) for intx_row
plans marked `gptq` when a Hessian for the tensor is given. A Hessian that cannot be factorised even
with extra damping falls back to round to nearest, and the returned plan says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from pgolf.errors import UserError
from pgolf.quant.intx import quantize_rtn
from pgolf.quant.layout import QuantizedTensor, TensorPlan


@dataclass(frozen=True)
class GPTQOptions:
    """Solver settings of GPTQ (quant.gptq_block_size, quant.gptq_act_order, quant.gptq_damp)."""

    block_size: int = 128
    act_order: bool = True
    damp: float = 0.01


def check_finite(name: str, t: Tensor) -> None:
    """A non-finite weight cannot be exported; say which tensor rather than write a broken artifact."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise UserError(f"tensor {name} holds NaN or inf values; the model diverged — lower the learning rates "
                        f"or check the data")


def quantize_one(name: str, t: Tensor, plan: TensorPlan, hessian: Tensor | None, options: GPTQOptions,
                 factors: dict[str, Any] | None = None) -> QuantizedTensor:
    """One tensor under its plan; GPTQ when the plan asks for it and a Hessian is at hand. `factors` keeps
    each Hessian's factorisation across the calls of one export (the budget fit re-quantises tensors)."""
    t = t.detach()
    check_finite(name, t)
    if plan.kind == "intx_row" and plan.gptq and hessian is not None:
        from pgolf.quant.gptq import GPTQError, cached_factor, quantize_rows_gptq  # shipped only with quant.gptq

        try:
            factor = cached_factor(factors, name, hessian, act_order=options.act_order, damp=options.damp)
            # on the Hessian's device: the column loop is the slow part of an export on a GPU
            parts = quantize_rows_gptq(t.to(hessian.device), plan, hessian, block_size=options.block_size,
                                       act_order=options.act_order, damp=options.damp, factor=factor)
            return QuantizedTensor(plan=plan, parts={k: v.cpu() for k, v in parts.items()})
        except GPTQError:
            pass
    plan = replace(plan, gptq=False) if plan.gptq else plan
    return QuantizedTensor(plan=plan, parts={k: v.cpu() for k, v in quantize_rtn(t, plan).items()})


def quantize(state: Mapping[str, Tensor], plans: Mapping[str, TensorPlan], hessians: Mapping[str, Tensor] | None = None,
             options: GPTQOptions = GPTQOptions(), factors: dict[str, Any] | None = None) -> dict[str, QuantizedTensor]:
    """Name -> QuantizedTensor for every planned tensor, in plan order (`factors`: see quantize_one)."""
    hessians = hessians or {}
    return {name: quantize_one(name, state[name], plan, hessians.get(name), options, factors)
            for name, plan in plans.items()}
