"""The block MLP: fc -> squared activation -> proj, with `proj` zero-initialised.

Squared ReLU is the challenge baseline's (openai/parameter-golf `train_gpt.py`, from modded-nanogpt).
"""

from __future__ import annotations

import torch
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear
from pgolf.model.specs import LayerSpec


class MLP(nn.Module):
    """fc -> relu^2 -> proj; `proj` starts at zero so the block's MLP starts as a no-op."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden_dim)
        self.proj = CastedLinear(cfg.mlp_hidden_dim, cfg.model_dim)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x)).square()  # (B, T, hidden)
        return self.proj(h)  # (B, T, C)
