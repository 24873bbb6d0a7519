"""Which optimiser trains which parameter (the challenge baseline's split).

- Adam: the token embedding (tied_embed_lr when tied, embed_lr otherwise);
- Muon: 2-D matrices inside blocks that are not control tensors (matrix_lr);
- Adam: vectors, scalars, control tensors and skip_weights (scalar_lr);
- Adam: the untied output head (head_lr), only when embeddings are untied.
Every param group records `base_lr`, which the schedule scales each step. Each group also carries a
`name` for logs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.model.gpt import GPT, is_control_tensor
from pgolf.optim.muon import Muon


def split_block_params(model: GPT) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon matrices, Adam scalars/controls) among the blocks' parameters."""
    matrices, scalars = [], []
    for name, p in model.blocks.named_parameters():
        (matrices if p.ndim == 2 and not is_control_tensor(name) else scalars).append(p)
    return matrices, scalars


def _adam(name: str, params: list[nn.Parameter], lr: float, cfg: OptimConfig, fused: bool) -> torch.optim.Adam:
    group = {"params": params, "lr": lr, "base_lr": lr, "name": name}
    return torch.optim.Adam([group], betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)


def build_optimizers(model: GPT, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """[Adam tok_emb, (Adam lm_head when untied,) Muon matrices, Adam scalars], in the baseline's order."""
    fused = model.tok_emb.weight.is_cuda
    matrices, scalars = split_block_params(model)
    scalars.append(model.skip_weights)
    tied = model.lm_head is None
    token_lr = cfg.tied_embed_lr if tied else cfg.embed_lr
    muon = Muon(matrices, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
        group["name"] = "matrices"
    optimizers: list[torch.optim.Optimizer] = [
        _adam("tok_emb", [model.tok_emb.weight], token_lr, cfg, fused),
        muon,
        _adam("scalars", scalars, cfg.scalar_lr, cfg, fused),
    ]
    if not tied:
        optimizers.insert(1, _adam("lm_head", [model.lm_head.weight], cfg.head_lr, cfg, fused))
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
