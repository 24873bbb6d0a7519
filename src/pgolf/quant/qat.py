"""Late QAT: straight-through fake quantisation of the block matrices for the end of training.

From the 2026-03-21/22 records (`CastedLinear._qat_enabled`): once the LR multiplier falls below
`train.qat_threshold`, every block matrix is replaced in the forward pass by w + (q(w) - w).detach(),
where q is the EXPORT's own quantise -> dequantise for that tensor (`pgolf.quant.intx.fake_quantize`
with the plan `plan_export` gives it), so the model trains against the rounding it will get; the
gradient passes straight through to the full-precision weight. The switch sets an instance attribute
of each CastedLinear, which a compiled model guards on (a record's class-level flag was folded into
the compiled graph as a constant, and its late QAT never ran).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from pgolf.config import RunConfig
from pgolf.model.layers import CastedLinear
from pgolf.model.roles import param_roles
from pgolf.quant.intx import fake_quantize
from pgolf.quant.layout import TensorPlan
from pgolf.quant.plan import plan_export


def straight_through(w: torch.Tensor, plan: TensorPlan) -> torch.Tensor:
    """Forward: the export's fake-quantised weight; backward: the identity (straight-through estimator)."""
    return w + (fake_quantize(w.detach(), plan) - w).detach()


def qat_targets(model: nn.Module, cfg: RunConfig) -> dict[CastedLinear, TensorPlan]:
    """The block matrices the export quantises to integers, each with its export plan."""
    roles = param_roles(model)
    plans = plan_export(model, roles, cfg.quant)
    targets = {}
    for name, module in model.named_modules():
        key = f"{name}.weight"
        if isinstance(module, CastedLinear) and roles.get(key) == "matrix" and plans[key].kind.startswith("intx"):
            targets[module] = plans[key]
    return targets


def qat_switch(model: nn.Module, cfg: RunConfig) -> Callable[[bool], None]:
    """A switch for the trainer: on installs the straight-through transform on every target, off removes it."""
    targets = qat_targets(model, cfg)

    def switch(on: bool) -> None:
        for module, plan in targets.items():
            module.weight_transform = partial(straight_through, plan=plan) if on else None

    return switch
