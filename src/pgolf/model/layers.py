"""Building blocks of the baseline GPT: parameter-free RMS norm, fp32-master linear, rotary embedding.

Follows the challenge baseline (openai/parameter-golf `train_gpt.py`): norms carry no weights,
linear weights stay fp32 and are cast to the activation dtype at the matmul (bf16 compute under
autocast, fp32 optimiser state), and RoPE rotates the two halves of each head (half-split).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS-normalise the last dimension; no learned scale (eps: PyTorch's default for the dtype)."""
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 weight is cast to the input's dtype at the matmul.

    `role` says what the weight is to the optimiser and the exporter (`pgolf.model.roles`): a block
    "matrix" by default, "head" for an untied output head, "gate" for a small gate projection."""

    def __init__(self, in_features: int, out_features: int, role: str = "matrix") -> None:
        super().__init__(in_features, out_features, bias=False)
        self.role = role

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def role_embedding(num_embeddings: int, embedding_dim: int, role: str) -> nn.Embedding:
    """An nn.Embedding tagged with its role: "embedding" for the token table, "table" for side tables."""
    emb = nn.Embedding(num_embeddings, embedding_dim)
    emb.role = role
    return emb


class Rotary(nn.Module):
    """RoPE cos/sin tables for one head size, cached as non-persistent buffers.

    The buffers follow the module across `.to(device)` and never enter the state dict. The cache grows
    (to the next power of two) when a longer sequence arrives; it is always built outside inference
    mode so a table first made during evaluation can still be saved for backward in training.
    """

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_cached", torch.empty(0, head_dim // 2), persistent=False)
        self.register_buffer("sin_cached", torch.empty(0, head_dim // 2), persistent=False)

    def _grow(self, seq_len: int) -> None:
        length = 1 << max(seq_len - 1, 0).bit_length()
        with torch.inference_mode(False), torch.no_grad():
            t = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)  # (L,)
            freqs = t[:, None] * self.inv_freq[None, :]  # (L, D/2)
            self.cos_cached = freqs.cos()
            self.sin_cached = freqs.sin()

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (1, 1, seq_len, head_dim/2) in `dtype`, broadcastable over (B, H, T, D/2)."""
        if self.cos_cached.size(0) < seq_len:
            self._grow(seq_len)
        cos = self.cos_cached[:seq_len].to(dtype)[None, None]  # (1, 1, T, D/2)
        sin = self.sin_cached[:seq_len].to(dtype)[None, None]  # (1, 1, T, D/2)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + D/2]) by the position's angles; x is (B, H, T, D)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, H, T, D/2) each
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)  # (B, H, T, D)
