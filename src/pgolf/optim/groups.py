"""Which optimiser trains which parameter (the challenge baseline's split), by role (`pgolf.model.roles`).

- Adam: the token embedding (tied_embed_lr when tied, embed_lr otherwise) and side tables;
- Muon: block matrices (matrix_lr);
- Adam: control tensors and gates (scalar_lr);
- Adam: the untied output head (head_lr), only when embeddings are untied.
Every param group records `base_lr`, which the schedule scales each step. Each group also carries a
`name` for logs.
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


def _adam(name: str, params: list[nn.Parameter], lr: float, cfg: OptimConfig, fused: bool) -> torch.optim.Adam:
    group = {"params": params, "lr": lr, "base_lr": lr, "name": name}
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
                ns_dtype=ns_dtype)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
        group["name"] = "matrices"
    optimizers: list[torch.optim.Optimizer] = [
        _adam("tok_emb", by_role["embedding"] + by_role["table"], token_lr, cfg, fused),
        muon,
        _adam("scalars", scalars, cfg.scalar_lr, cfg, fused),
    ]
    if not tied:
        optimizers.insert(1, _adam("lm_head", by_role["head"], cfg.head_lr, cfg, fused))
    _assert_partition(model, optimizers)
    return optimizers


def _assert_partition(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every trainable parameter sits in exactly one param group."""
    seen = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)), "a parameter is in more than one optimiser group"
    assert set(seen) == trainable, "optimiser groups do not cover exactly the trainable parameters"


def describe_groups(optimizers: list[torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """One JSON-ready row per param group: group name, optimiser, base lr, tensor and scalar counts."""
    return [
        {
            "group": g.get("name", "?"),
            "optimizer": type(opt).__name__,
            "lr": g["base_lr"],
            "num_tensors": len(g["params"]),
            "num_params": sum(p.numel() for p in g["params"]),
        }
        for opt in optimizers
        for g in opt.param_groups
    ]
