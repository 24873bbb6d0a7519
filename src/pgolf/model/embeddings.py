"""Token-side inputs of the GPT: everything computed from token ids alone, before the first block.

- The token table (the baseline's, openai/parameter-golf `train_gpt.py`), shared with the tied head;
  its RMS-normalised output is x0, mixed back into every block.
- BigramHash (PR #135, 2026-03-22 record): a zero-initialised table indexed by a hash of the token
  and its predecessor, h_0 = B-1, h_t = ((36313 t_t) XOR (27191 t_{t-1})) mod (B-1) in int32, projected
  to model_dim and scaled (init 0.05), added to the token embedding before the norm; optionally a
  trigram hash (XOR 51497 t_{t-2}) looked up in the same table (2026-03-25 record, TRIGRAM=1).
- SmearGate: v1 (PR #65) blends the previous position into each position with a learned per-channel
  gate after the norm; v2 (modded-nanogpt, 2026-04-27 record) adds lambda * sigmoid(W x_t[:12]) * x_{t-1}
  before the norm, W and lambda zero-initialised. Both skip a BOS position, so nothing of one
  document reaches the next (the BOS fix of the 04-27 record, PR #1797 audit).
- The shared value-embedding table (PR #374) whose projected output some blocks add to their values
  (`pgolf.model.attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear, orthogonal_init_, rms_norm, role_embedding
from pgolf.tokenizer import BOS_ID

BIGRAM_MULTIPLIERS = (36313, 27191, 51497)  # t_t, t_{t-1}, t_{t-2}
VALUE_EMBED_INIT_STD = 0.01
VALUE_EMBED_SCALE_INIT = 0.1


def token_embedding(cfg: ModelConfig) -> nn.Embedding:
    """The token table (role "embedding"); `reset_token_embedding` gives it the baseline's init."""
    return role_embedding(cfg.vocab_size, cfg.model_dim, "embedding")


def reset_token_embedding(emb: nn.Embedding, cfg: ModelConfig) -> None:
    """N(0, tied_embed_init_std) when tied (it is also the output head); PyTorch's N(0, 1) otherwise."""
    if cfg.tie_embeddings:
        nn.init.normal_(emb.weight, mean=0.0, std=cfg.tied_embed_init_std)


def bigram_hash(input_ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """(B, T) bucket of each (t_{t-1}, t_t) pair; position 0, without a predecessor, gets the last bucket."""
    t = input_ids.to(torch.int32)
    mod = num_buckets - 1
    a, b, _ = BIGRAM_MULTIPLIERS
    out = torch.full_like(t, mod)  # (B, T)
    out[:, 1:] = torch.bitwise_xor(a * t[:, 1:], b * t[:, :-1]) % mod  # int32 products wrap as in the record
    return out.long()


def trigram_hash(input_ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """(B, T) bucket of each (t_{t-2}, t_{t-1}, t_t); the first two positions get the last bucket."""
    t = input_ids.to(torch.int32)
    mod = num_buckets - 1
    a, b, c = BIGRAM_MULTIPLIERS
    out = torch.full_like(t, mod)  # (B, T)
    out[:, 2:] = torch.bitwise_xor(torch.bitwise_xor(a * t[:, 2:], b * t[:, 1:-1]), c * t[:, :-2]) % mod
    return out.long()


class BigramHashEmbedding(nn.Module):
    """Hashed previous-token context added to the token embedding; zero at init (zero table)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_buckets = cfg.bigram_buckets
        self.trigram = cfg.bigram_trigram
        self.table = role_embedding(cfg.bigram_buckets, cfg.bigram_dim, "table")
        self.proj = CastedLinear(cfg.bigram_dim, cfg.model_dim) if cfg.bigram_dim != cfg.model_dim else None
        self.scale = nn.Parameter(torch.tensor(cfg.bigram_scale_init, dtype=torch.float32))

    def reset_parameters(self, ortho_scale: float = 0.0) -> None:
        """Zero table and projection; with OrthoInit the projection is orthogonal * ortho_scale (03-22 record)."""
        nn.init.zeros_(self.table.weight)
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
            if ortho_scale:
                orthogonal_init_(self.proj, ortho_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.table(bigram_hash(input_ids, self.num_buckets))  # (B, T, d_b)
        if self.trigram:
            h = h + self.table(trigram_hash(input_ids, self.num_buckets))  # (B, T, d_b)
        if self.proj is not None:
            h = self.proj(h)  # (B, T, C)
        return h * self.scale.to(h.dtype)


class SmearGate(nn.Module):
    """Previous-token blend of the input stream; v1 after the embedding norm, v2 before it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.version = cfg.smear_gate
        self.window = cfg.smear_gate_window
        if self.version == "v1":
            self.gate = nn.Parameter(torch.zeros(cfg.model_dim, dtype=torch.float32))  # sigmoid(0) = 1/2
        else:
            self.gate_proj = CastedLinear(cfg.smear_gate_window, 1, role="gate")
            self.lam = nn.Parameter(torch.zeros(1, dtype=torch.float32))

    @property
    def before_norm(self) -> bool:
        return self.version == "v2"

    def reset_parameters(self) -> None:
        if self.version == "v2":
            nn.init.zeros_(self.gate_proj.weight)  # with lam = 0, the identity at init

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        x_prev = F.pad(x[:, :-1], (0, 0, 1, 0))  # (B, T, C), zeros before position 0
        # a BOS position starts a document: it takes nothing from the position before it
        keep = (input_ids != BOS_ID).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        if self.version == "v1":
            g = torch.sigmoid(self.gate.to(x.dtype))[None, None, :]  # (1, 1, C)
            return x + g * (x_prev - x) * keep
        g = self.lam.to(x.dtype) * torch.sigmoid(self.gate_proj(x[..., : self.window]))  # (B, T, 1)
        return x + g * x_prev * keep


class ValueEmbedding(nn.Module):
    """One token table shared by the value-embedding blocks, projected to the KV width and scaled."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.table = role_embedding(cfg.vocab_size, cfg.value_embed_dim, "table")
        self.proj = CastedLinear(cfg.value_embed_dim, kv_dim) if cfg.value_embed_dim != kv_dim else None
        self.scale = nn.Parameter(torch.tensor(VALUE_EMBED_SCALE_INIT, dtype=torch.float32))

    def reset_parameters(self, ortho_scale: float = 0.0) -> None:
        """Table N(0, 0.01); projection zero, or orthogonal * ortho_scale with OrthoInit (03-22 record)."""
        nn.init.normal_(self.table.weight, mean=0.0, std=VALUE_EMBED_INIT_STD)
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
            if ortho_scale:
                orthogonal_init_(self.proj, ortho_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.table(input_ids)  # (B, T, d_ve)
        if self.proj is not None:
            h = self.proj(h)  # (B, T, KV*D)
        return h * self.scale.to(h.dtype)


def embed_input(input_ids: torch.Tensor, tok_emb: nn.Embedding, bigram: BigramHashEmbedding | None = None,
                smear: SmearGate | None = None) -> torch.Tensor:
    """The normalised input stream x0 (B, T, C) for token ids (B, T)."""
    x = tok_emb(input_ids)  # (B, T, C)
    if bigram is not None:
        x = x + bigram(input_ids)
    if smear is not None and smear.before_norm:
        x = smear(x, input_ids)
    x = rms_norm(x)
    if smear is not None and not smear.before_norm:
        x = smear(x, input_ids)
    return x
