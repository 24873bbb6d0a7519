"""Building blocks of the GPT: parameter-free RMS norm, fp32-master linear, rotary embedding.

Follows the challenge baseline (openai/parameter-golf `train_gpt.py`): norms carry no weights,
linear weights stay fp32 and are cast to the activation dtype at the matmul (bf16 compute under
autocast, fp32 optimiser state), and RoPE rotates the two halves of each head (half-split).
Partial RoPE (PR #315) rotates only the first `rope_dims` dims of a head, half-split within them,
and leaves the rest position-free; beyond the training length the base is NTK-rescaled
(2026-03-19 WarmdownQuantization and later records): base * (T / T_train) ** (rd / (rd - 2)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS-normalise the last dimension; no learned scale (eps: PyTorch's default for the dtype)."""
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 weight is cast to the input's dtype at the matmul.

    `role` says what the weight is to the optimiser and the exporter (`pgolf.model.roles`): a block
    "matrix" by default, "head" for an untied output head, "gate" for a small gate projection.
    `weight_transform`, when set (late QAT, `pgolf.quant.qat`), maps the weight before the matmul. It is
    an instance attribute, so a compiled model guards on it and recompiles when it is switched on (a
    class-level flag would be folded into the graph as a constant and the switch would do nothing)."""

    def __init__(self, in_features: int, out_features: int, role: str = "matrix") -> None:
        super().__init__(in_features, out_features, bias=False)
        self.role = role
        self.weight_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_transform is None else self.weight_transform(self.weight)
        return F.linear(x, w.to(x.dtype))


def clear_weight_transforms(model: nn.Module) -> int:
    """Switch every CastedLinear's `weight_transform` off (the end of late QAT); returns how many were on."""
    on = [m for m in model.modules() if isinstance(m, CastedLinear) and m.weight_transform is not None]
    for module in on:
        module.weight_transform = None
    return len(on)


def role_embedding(num_embeddings: int, embedding_dim: int, role: str) -> nn.Embedding:
    """An nn.Embedding tagged with its role: "embedding" for the token table, "table" for side tables."""
    emb = nn.Embedding(num_embeddings, embedding_dim)
    emb.role = role
    return emb


def orthogonal_init_(linear: nn.Linear, scale: float = 1.0) -> None:
    """OrthoInit of the records: orthogonal (gain 1) times `scale`, only for weights of at least 64x64."""
    w = linear.weight
    if w.size(0) >= 64 and w.size(1) >= 64:
        nn.init.orthogonal_(w, gain=1.0)
        if scale != 1.0:
            with torch.no_grad():
                w.mul_(scale)


def inverse_frequencies(rope_dims: int, base: float) -> torch.Tensor:
    """RoPE angle rates (rope_dims/2,) for pairs (i, i + rope_dims/2)."""
    return 1.0 / (base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims))  # (rd/2,)


def ntk_base(base: float, rope_dims: int, seq_len: int, train_seq_len: int) -> float:
    """The NTK-aware base for a sequence longer than training: base * (T / T_train) ** (rd / (rd - 2))."""
    if train_seq_len <= 0 or seq_len <= train_seq_len:
        return base
    return base * (seq_len / train_seq_len) ** (rope_dims / (rope_dims - 2))


class Rotary(nn.Module):
    """RoPE cos/sin tables for the rotated dims of a head, cached as non-persistent buffers.

    The buffers follow the module across `.to(device)` and never enter the state dict. The cache grows
    (to the next power of two) when a longer sequence arrives; it is always built outside inference
    mode so a table first made during evaluation can still be saved for backward in training. With
    `train_seq_len` set, a longer sequence gets a table of its own from the NTK-rescaled base, chosen
    from the length seen at forward time.
    """

    def __init__(self, rope_dims: int, base: float, train_seq_len: int = 0) -> None:
        super().__init__()
        self.rope_dims = rope_dims
        self.base = base
        self.train_seq_len = train_seq_len
        self.register_buffer("inv_freq", inverse_frequencies(rope_dims, base), persistent=False)
        self.register_buffer("cos_cached", torch.empty(0, rope_dims // 2), persistent=False)
        self.register_buffer("sin_cached", torch.empty(0, rope_dims // 2), persistent=False)
        self.register_buffer("ntk_cos", torch.empty(0, rope_dims // 2), persistent=False)
        self.register_buffer("ntk_sin", torch.empty(0, rope_dims // 2), persistent=False)

    @staticmethod
    def _table(length: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(False), torch.no_grad():
            t = torch.arange(length, device=inv_freq.device, dtype=torch.float32)  # (L,)
            freqs = t[:, None] * inv_freq[None, :]  # (L, rd/2)
            return freqs.cos(), freqs.sin()

    def _grow(self, seq_len: int) -> None:
        self.cos_cached, self.sin_cached = self._table(1 << max(seq_len - 1, 0).bit_length(), self.inv_freq)

    def grow(self, seq_len: int) -> None:
        """Cover `seq_len` now, before a compiled graph runs: a table grown inside the first compiled call
        changes a buffer the graph was guarded on, and the second call compiles again."""
        if self.cos_cached.size(0) < seq_len:
            self._grow(seq_len)

    def _rescaled(self, seq_len: int) -> None:
        base = ntk_base(self.base, self.rope_dims, seq_len, self.train_seq_len)
        inv_freq = inverse_frequencies(self.rope_dims, base).to(self.inv_freq.device)  # (rd/2,)
        self.ntk_cos, self.ntk_sin = self._table(seq_len, inv_freq)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (1, 1, seq_len, rope_dims/2) in `dtype`, broadcastable over (B, H, T, rd/2)."""
        if 0 < self.train_seq_len < seq_len:
            if self.ntk_cos.size(0) != seq_len:
                self._rescaled(seq_len)
            return self.ntk_cos.to(dtype)[None, None], self.ntk_sin.to(dtype)[None, None]
        if self.cos_cached.size(0) < seq_len:
            self._grow(seq_len)
        cos = self.cos_cached[:seq_len].to(dtype)[None, None]  # (1, 1, T, rd/2)
        sin = self.sin_cached[:seq_len].to(dtype)[None, None]  # (1, 1, T, rd/2)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + rd/2]) of the first rd = 2 * cos.size(-1) dims; x is (B, H, T, D)."""
    rd = 2 * cos.size(-1)
    if rd < x.size(-1):
        return torch.cat((apply_rotary(x[..., :rd], cos, sin), x[..., rd:]), dim=-1)  # (B, H, T, D)
    half = rd // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, H, T, D/2) each
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)  # (B, H, T, D)
