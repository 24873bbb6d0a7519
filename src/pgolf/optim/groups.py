"""Which optimiser trains which parameter (the challenge baseline's split), by role (`pgolf.model.roles`).

- Adam: the token embedding (tied_embed_lr when tied, embed_lr otherwise) and side tables;
- Muon: block matrices (matrix_lr);
- Adam: control tensors and gates (scalar_lr);
- Adam: the untied output head (head_lr), only when embeddings are untied.
Every param group records `base_lr`, which the schedule scales each step, and `base_wd`, its decoupled
weight decay (optim.muon_wd for the matrices, optim.embed_wd for the embedding and side tables,
optim.adam_wd for the other Adam groups), which the schedule's taper scales into `wd`. Each group also
carries a `name` for logs. The decay is applied by `decay_weights_` before the optimisers step
(p *= 1 - lr * wd, as AdamW and the records' Muon WD), outside the optimisers so that Adam stays
torch's Adam (its own `weight_decay` is the coupled L2 form) and a zero decay touches nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.dist import use_bf16
from pgolf.model.gpt import GPT
from pgolf.model.roles import params_by_role
from pgolf.optim.muon import Muon


def _adam(name: str, params: list[nn.Parameter], lr: float, wd: float, cfg: OptimConfig,
          fused: bool) -> torch.optim.Adam:
    group = {"params": params, "lr": lr, "base_lr": lr, "name": name, "base_wd": wd, "wd": wd}
    return torch.optim.Adam([group], betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)


def build_optimizers(model: GPT, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """[Adam tok_emb, (Adam lm_head when untied,) Muon matrices, Adam scalars], in the baseline's order."""
    fused = model.tok_emb.weight.is_cuda
    by_role = params_by_role(model)
    matrices, scalars = by_role["matrix"], by_role["control"] + by_role["gate"]
    tied = model.lm_head is None
    token_lr = cfg.tied_embed_lr if tied else cfg.embed_lr
    ns_dtype = torch.bfloat16 if use_bf16(cfg.muon_dtype, model.tok_emb.weight.device) else torch.float32
    muon = Muon(matrices, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps,
                ns_dtype=ns_dtype, ns_coeffs=cfg.muon_ns_coeffs, row_normalize=cfg.muon_row_normalize,
                sharded=cfg.muon_sharded, batched=cfg.muon_batched)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
        group["name"] = "matrices"
        group["base_wd"] = group["wd"] = cfg.muon_wd
    optimizers: list[torch.optim.Optimizer] = [
        _adam("tok_emb", by_role["embedding"] + by_role["table"], token_lr, cfg.embed_wd, cfg, fused),
        muon,
        _adam("scalars", scalars, cfg.scalar_lr, cfg.adam_wd, cfg, fused),
    ]
    if not tied:
        optimizers.insert(1, _adam("lm_head", by_role["head"], cfg.head_lr, cfg.adam_wd, cfg, fused))
    _assert_partition(model, optimizers)
    return optimizers


def _assert_partition(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every trainable parameter sits in exactly one param group."""
    seen = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)), "a parameter is in more than one optimiser group"
    assert set(seen) == trainable, "optimiser groups do not cover exactly the trainable parameters"


@torch.no_grad()
def decay_weights_(optimizers: list[torch.optim.Optimizer]) -> None:
    """Decoupled weight decay, p *= 1 - lr * wd, for every group with a positive `wd` (run before the step)."""
    for opt in optimizers:
        for group in opt.param_groups:
            if group.get("wd", 0.0) > 0:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * group["wd"])


def describe_groups(optimizers: list[torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """One JSON-ready row per param group: group name, optimiser, base lr, tensor and scalar counts."""
    return [
        {
            "group": g.get("name", "?"),
            "optimizer": type(opt).__name__,
            "lr": g["base_lr"],
            "wd": g.get("base_wd", 0.0),
            "num_tensors": len(g["params"]),
            "num_params": sum(p.numel() for p in g["params"]),
        }
        for opt in optimizers
        for g in opt.param_groups
    ]
