"""Causal self-attention of the baseline: GQA, RMS QK-norm, RoPE, learned per-head query gain.

Order as in the challenge baseline (openai/parameter-golf `train_gpt.py`): project, RMS-norm q and k
per head, rotate, multiply q by `q_gain`, then causal attention with the default 1/sqrt(head_dim)
scale. Backends: "auto" (on CUDA, flash attention first with SDPA's fallbacks; elsewhere default
SDPA), "sdpa" (PyTorch's dispatcher), "flash" (CUDA flash kernel only) and "math" (an explicit
matmul-softmax in fp32, the reference the fused paths are tested against).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear, Rotary, apply_rotary, rms_norm
from pgolf.model.specs import LayerSpec

ATTN_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash", "math")

# enable_gqa arrived in torch 2.5; older versions get K/V repeated per query head instead.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def check_backend(backend: str) -> None:
    """Raise ValueError for an unknown backend, or for "flash" where CUDA is missing."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend={backend!r} is not one of {ATTN_BACKENDS}")
    if backend == "flash" and not torch.cuda.is_available():
        raise ValueError("attn_backend='flash' needs a CUDA device; use 'auto' or 'sdpa' on CPU")


def repeat_kv(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(B, KV, T, D) -> (B, KV * num_groups, T, D): query head h reads kv head h // num_groups."""
    return x if num_groups == 1 else x.repeat_interleave(num_groups, dim=1)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference causal attention in fp32 (autocast off); q is (B, H, T, D), k and v (B, KV, T, D)."""
    num_groups = q.size(1) // k.size(1)
    T = q.size(2)
    with torch.autocast(device_type=q.device.type, enabled=False):
        qf, kf, vf = q.float(), repeat_kv(k, num_groups).float(), repeat_kv(v, num_groups).float()
        scores = qf @ kf.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # (T, T)
        scores = scores.masked_fill(future, float("-inf"))
        y = scores.softmax(dim=-1) @ vf  # (B, H, T, D)
    return y.to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA with grouped K/V; q is (B, H, T, D), k and v (B, KV, T, D)."""
    num_groups = q.size(1) // k.size(1)
    if num_groups > 1 and not _SDPA_HAS_GQA:
        k, v = repeat_kv(k, num_groups), repeat_kv(v, num_groups)  # (B, H, T, D)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=num_groups > 1)  # (B, H, T, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Causal attention with the named backend; q is (B, H, T, D), k and v (B, KV, T, D)."""
    if backend == "math":
        return math_attention(q, k, v)
    if backend == "flash":
        if not q.is_cuda:
            raise ValueError("attn_backend='flash' needs CUDA tensors; use 'auto' or 'sdpa' on CPU")
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa_attention(q, k, v)
    if backend == "auto" and q.is_cuda:
        # Flash first (the baseline's kernel); efficient/math remain as fallbacks for ineligible inputs.
        order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(order, set_priority=True):
            return sdpa_attention(q, k, v)
    return sdpa_attention(q, k, v)


class CausalSelfAttention(nn.Module):
    """GQA attention with QK-norm, RoPE and a learned per-head query gain; `proj` starts at zero."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backend: str = "auto") -> None:
        super().__init__()
        check_backend(backend)
        dim = cfg.model_dim
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.backend = backend
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def reset_parameters(self) -> None:
        # zero-init the output projection so each block's attention starts as a no-op
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.c_q(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.c_k(x).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        v = self.c_v(x).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, q.dtype)  # (1, 1, T, D/2) each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]  # (B, H, T, D)
        y = attend(q, k, v, self.backend)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)
