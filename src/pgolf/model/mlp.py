"""The block MLP: fc -> squared activation -> proj, with `proj` zero-initialised.

Squared ReLU is the challenge baseline's (openai/parameter-golf `train_gpt.py`, from modded-nanogpt);
LeakyReLU(0.5) squared is PR #493's (-0.002 to -0.003 bpb in the records). The hidden width is a
multiple of model_dim or an explicit size (`model.mlp_hidden`, e.g. the 03-18 record's 992).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear, orthogonal_init_
from pgolf.model.specs import LayerSpec

LEAKY_SLOPE = 0.5


def squared_activation(h: torch.Tensor, kind: str) -> torch.Tensor:
    """relu(h)^2 ("relu2") or leaky_relu(h, 0.5)^2 ("leaky_relu2")."""
    if kind == "leaky_relu2":
        return F.leaky_relu(h, negative_slope=LEAKY_SLOPE).square()
    return torch.relu(h).square()


class MLP(nn.Module):
    """fc -> squared activation -> proj; `proj` starts at zero so the block's MLP starts as a no-op."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.activation = cfg.mlp_activation
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden_dim)
        self.proj = CastedLinear(cfg.mlp_hidden_dim, cfg.model_dim)

    def reset_parameters(self, ortho: bool = False) -> None:
        nn.init.zeros_(self.proj.weight)
        if ortho:
            orthogonal_init_(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = squared_activation(self.fc(x), self.activation)  # (B, T, hidden)
        return self.proj(h)  # (B, T, C)
