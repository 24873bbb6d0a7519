"""Frozen copy of the baseline GPT as it stood before the per-layer-spec refactor (issue 7).

This is the reference the refactored model is tested against (bit-identical logits, the same
parameter names, shapes and order for the baseline config). It is the project's own earlier
`pgolf.model.{layers,attention,gpt}` joined into one file and must not be edited: a change here
would move the reference instead of catching a regression.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.config import ModelConfig


# ---- layers.py ----

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


# ---- attention.py ----

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

    def __init__(self, *, model_dim: int, num_heads: int, num_kv_heads: int, rope_base: float,
                 qk_gain_init: float, backend: str = "auto") -> None:
        super().__init__()
        check_backend(backend)
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = model_dim // num_heads
        self.backend = backend
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(model_dim, model_dim)
        self.c_k = CastedLinear(model_dim, kv_dim)
        self.c_v = CastedLinear(model_dim, kv_dim)
        self.proj = CastedLinear(model_dim, model_dim)
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, rope_base)

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


# ---- gpt.py ----

def count_parameters(model: nn.Module) -> int:
    """Number of scalars in all parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class MLP(nn.Module):
    """fc -> relu^2 -> proj (modded-nanogpt's squared ReLU); `proj` starts at zero."""

    def __init__(self, model_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc = CastedLinear(model_dim, hidden_dim)
        self.proj = CastedLinear(hidden_dim, model_dim)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x)).square()  # (B, T, hidden)
        return self.proj(h)  # (B, T, C)


class Block(nn.Module):
    """Pre-norm block: mix in x0, then scaled attention and scaled MLP residual updates."""

    def __init__(self, cfg: ModelConfig, attn_backend: str) -> None:
        super().__init__()
        dim = cfg.model_dim
        self.attn = CausalSelfAttention(model_dim=dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                                        rope_base=cfg.rope_base, qk_gain_init=cfg.qk_gain_init, backend=attn_backend)
        self.mlp = MLP(dim, cfg.mlp_hidden_dim)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # rows (1, 0): the block starts reading only the running stream, none of x0
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)  # (2, C)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0  # (B, T, C)
        x = x + self.attn_scale.to(x.dtype)[None, None, :] * self.attn(rms_norm(x))
        x = x + self.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(rms_norm(x))
        return x


class ReferenceGPT(nn.Module):
    """The baseline language model; `forward` returns the mean fp32 cross-entropy."""

    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        cfg.validate()
        check_backend(attn_backend)
        self.cfg = cfg
        self.attn_backend = attn_backend
        self.tok_emb = role_embedding(cfg.vocab_size, cfg.model_dim, "embedding")
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        self.blocks = nn.ModuleList(Block(cfg, attn_backend) for _ in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, role="head")
        self._init_weights()

    def _init_weights(self) -> None:
        # Other linears keep nn.Linear's default init, as the baseline; the untied embedding keeps N(0, 1).
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for block in self.blocks:
            block.attn.reset_parameters()
            block.mlp.reset_parameters()
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-normed residual stream (B, T, C) for token ids (B, T)."""
        x = rms_norm(self.tok_emb(input_ids))  # (B, T, C)
        x0 = x
        skips: list[torch.Tensor] = []
        for block in self.blocks[: self.num_encoder_layers]:
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.num_encoder_layers:]):
            # decoder block i takes the skip from encoder block L//2 - 1 - i (last pushed, first popped)
            if skips:
                x = x + self.skip_weights[i].to(x.dtype)[None, None, :] * skips.pop()
            x = block(x, x0)
        return rms_norm(x)

    def logits_from_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Softcapped fp32 logits (..., V) from final hidden states (..., C)."""
        if self.lm_head is None:
            logits = F.linear(x, self.tok_emb.weight.to(x.dtype))  # (..., V)
        else:
            logits = self.lm_head(x)  # (..., V)
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits.float() / cap)

    def forward_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Softcapped fp32 logits (B, T, V)."""
        return self.logits_from_hidden(self.hidden_states(input_ids))

    def per_token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each target in nats, (B, T) float32."""
        logits = self.forward_logits(input_ids)  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), target_ids.flatten(), reduction="none")  # (B*T,)
        return nll.view_as(target_ids)

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all targets, a float32 scalar."""
        logits = self.forward_logits(input_ids)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten())
