"""Causal self-attention: the baseline's GQA with RMS QK-norm, RoPE and a learned per-head query gain,
plus the record techniques that live inside attention.

Order as in the challenge baseline (openai/parameter-golf `train_gpt.py`): project, RMS-norm q and k
per head, rotate, multiply q by `q_gain`, then causal attention with the default 1/sqrt(head_dim)
scale. Backends: "auto" (on CUDA, flash attention first with SDPA's fallbacks; elsewhere default
SDPA), "sdpa" (PyTorch's dispatcher), "flash" (CUDA flash kernel only) and "math" (an explicit
matmul-softmax in fp32, the reference the fused paths are tested against).

Per block (`LayerSpec`): partial RoPE with the NTK rescale (`pgolf.model.layers.Rotary`); value
embeddings added to the value projection before the reshape (PR #374); exclusive self attention,
which removes from each head's output its component along the token's own value vector
(arXiv:2603.09078, PR #265), in the grouped form that never repeats K/V; a gate on each head's
output (dense headwise, PR #1992 / arXiv:2505.06708; attention-output gate, PR #1667; sparse gate,
PR #1787); and document masking (`pgolf.model.documents`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.config import ModelConfig
from pgolf.model.documents import Documents, varlen_attention
from pgolf.model.layers import CastedLinear, Rotary, apply_rotary, orthogonal_init_, rms_norm
from pgolf.model.specs import LayerSpec

ATTN_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash", "math")
GATE_INIT_STD = 0.01  # dense headwise gate (PR #1992)

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


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention in fp32 (autocast off); q is (B, H, T, D), k and v (B, KV, T, D).

    Causal, or where `mask` (B, 1, Tq, T) allows when given."""
    num_groups = q.size(1) // k.size(1)
    T = q.size(2)
    with torch.autocast(device_type=q.device.type, enabled=False):
        qf, kf, vf = q.float(), repeat_kv(k, num_groups).float(), repeat_kv(v, num_groups).float()
        scores = qf @ kf.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if mask is None:
            future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # (T, T)
            scores = scores.masked_fill(future, float("-inf"))
        else:
            scores = scores.masked_fill(~mask, float("-inf"))
        y = scores.softmax(dim=-1) @ vf  # (B, H, T, D)
    return y.to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA with grouped K/V, causal or masked by `mask` (B, 1, T, T); q is (B, H, T, D), k and v (B, KV, T, D)."""
    num_groups = q.size(1) // k.size(1)
    causal = mask is None
    if num_groups > 1 and not _SDPA_HAS_GQA:
        k, v = repeat_kv(k, num_groups), repeat_kv(v, num_groups)  # (B, H, T, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=num_groups > 1)  # (B, H, T, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
           docs: Documents | None = None) -> torch.Tensor:
    """Causal attention with the named backend, within documents when `docs` is given.

    q is (B, H, Tq, D), k and v (B, KV, T, D); returns (B, H, Tq, D). With Tq < T the queries are the
    last Tq positions (each sees the keys up to its own position)."""
    if q.size(2) < k.size(2):
        tq, t = q.size(2), k.size(2)
        mask = torch.ones(tq, t, dtype=torch.bool, device=q.device).tril(t - tq)  # (Tq, T)
        if docs is not None:
            assert docs.mask is not None, "trimmed queries need the mask path of document attention"
            mask = docs.mask[:, :, t - tq:]  # (B, 1, Tq, T)
        return math_attention(q, k, v, mask) if backend == "math" else sdpa_attention(q, k, v, mask)
    if docs is not None:
        return _attend_documents(q, k, v, backend, docs)
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


def _attend_documents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
                      docs: Documents) -> torch.Tensor:
    if docs.cu_seqlens is not None:
        return varlen_attention(q, k, v, docs.cu_seqlens)
    assert docs.mask is not None
    if backend == "math":
        return math_attention(q, k, v, docs.mask)
    # SDPA's dispatcher picks a kernel that takes a mask (flash does not)
    return sdpa_attention(q, k, v, docs.mask)


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: y - (y . v_hat) v_hat per head, v_hat the unit value of the token's own KV head.

    y is (B, T, H, D), v (B, T, KV, D); query head h reads KV head h // (H / KV), so viewing y as
    (B, T, KV, group, D) lines each head up with its value without repeating it."""
    B, T, H, D = y.shape
    KV = v.size(2)
    y_g = y.reshape(B, T, KV, H // KV, D)  # (B, T, KV, G, D)
    v_hat = F.normalize(v, dim=-1).unsqueeze(3)  # (B, T, KV, 1, D)
    along = (y_g * v_hat).sum(dim=-1, keepdim=True) * v_hat  # (B, T, KV, G, D)
    return (y_g - along).reshape(B, T, H, D)


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
        self.xsa = spec.xsa
        self.gate_kind = spec.attn_gate
        self.gate_window = cfg.attn_gate_window
        self.gate_scale = cfg.attn_gate_scale
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(cfg.rotary_dims, cfg.rope_base, cfg.rope_train_seq_len)
        self.gate = None
        if spec.attn_gate != "off":
            gate_in = dim if spec.attn_gate == "headwise" else cfg.attn_gate_window
            self.gate = CastedLinear(gate_in, cfg.num_heads, role="gate")
        # per-layer scale of the shared value embedding (`pgolf.model.embeddings.ValueEmbedding`)
        self.ve_scale = nn.Parameter(torch.ones(1, dtype=torch.float32)) if spec.value_embed else None

    def reset_parameters(self, ortho: bool = False) -> None:
        # zero-init the output projection so each block's attention starts as a no-op
        nn.init.zeros_(self.proj.weight)
        if ortho:
            for linear in (self.c_q, self.c_k, self.c_v):
                orthogonal_init_(linear)
        if self.gate is not None:
            if self.gate_kind == "headwise":
                nn.init.normal_(self.gate.weight, mean=0.0, std=GATE_INIT_STD)
            else:  # output gate 2*sigmoid(0) = 1 and sparse gate sigmoid(0) = 1/2 at init
                nn.init.zeros_(self.gate.weight)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head output gate (B, T, H) from the attention input x (B, T, C)."""
        assert self.gate is not None
        if self.gate_kind == "headwise":
            return torch.sigmoid(self.gate(x))
        logits = self.gate(x[..., : self.gate_window])  # (B, T, H)
        if self.gate_kind == "output":
            return 2.0 * torch.sigmoid(logits)
        return torch.sigmoid(self.gate_scale * logits)

    def forward(self, x: torch.Tensor, value_embed: torch.Tensor | None = None,
                docs: Documents | None = None, keep_from: int = 0) -> torch.Tensor:
        """Attention output (B, T - keep_from, C) for the positions from `keep_from` on; keys and values
        come from every position of x (B, T, C)."""
        B, T, C = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        xq = x[:, keep_from:]  # (B, Tq, C)
        Tq = T - keep_from
        q = self.c_q(xq).view(B, Tq, H, D).transpose(1, 2)  # (B, H, Tq, D)
        k = self.c_k(x).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        v_flat = self.c_v(x)  # (B, T, KV*D)
        if self.ve_scale is not None and value_embed is not None:
            v_flat = v_flat + self.ve_scale.to(x.dtype) * value_embed  # (B, T, KV*D)
        v_tok = v_flat.view(B, T, KV, D)  # (B, T, KV, D)
        v = v_tok.transpose(1, 2)  # (B, KV, T, D)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, q.dtype)  # (1, 1, T, rd/2) each
        q, k = apply_rotary(q, cos[:, :, keep_from:], sin[:, :, keep_from:]), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]  # (B, H, Tq, D)
        y = attend(q, k, v, self.backend, docs)  # (B, H, Tq, D)
        if not self.xsa and self.gate is None:
            return self.proj(y.transpose(1, 2).contiguous().view(B, Tq, C))
        y = y.transpose(1, 2)  # (B, Tq, H, D)
        if self.xsa:
            y = exclusive_self_attention(y, v_tok[:, keep_from:])  # (B, Tq, H, D)
        if self.gate is not None:
            y = y * self._gate(xq)[..., None]  # (B, Tq, H, D)
        return self.proj(y.reshape(B, Tq, C))
