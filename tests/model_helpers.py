"""Tiny model configs and helpers shared by the model tests."""

from __future__ import annotations

import dataclasses

import torch

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT

V = 64


def tiny(**overrides: object) -> ModelConfig:
    """A 3x32 model (4 heads of 8, 2 KV heads) with the given technique fields."""
    fields: dict[str, object] = dict(vocab_size=V, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2)
    fields.update(overrides)
    return ModelConfig(**fields)


# One tiny config per technique; every one is small enough for a CPU test in well under a second.
TECHNIQUES: dict[str, ModelConfig] = {
    "mlp_hidden_leaky": tiny(mlp_hidden=40, mlp_activation="leaky_relu2"),
    "partial_rope_ntk": tiny(rope_dims=4, rope_train_seq_len=8),
    "ln_scale": tiny(ln_scale=True),
    "xsa": tiny(xsa_last_n=2),
    "smear_v1": tiny(smear_gate="v1"),
    "smear_v2": tiny(smear_gate="v2"),
    "bigram_trigram": tiny(bigram_buckets=37, bigram_dim=16, bigram_trigram=True),
    "value_embed": tiny(value_embed_layers=(0, 2), value_embed_dim=8),
    "skip_gates": tiny(skip_gates=True),
    "recurrence": tiny(num_loops=2, loop_start=1, loop_end=1),
    "parallel_gptj": tiny(parallel_residual="gptj", parallel_from=1),
    "parallel_two_lane": tiny(parallel_residual="two_lane", parallel_from=1),
    "gate_headwise": tiny(attn_gate="headwise"),
    "gate_output": tiny(attn_gate="output"),
    "gate_sparse": tiny(attn_gate="sparse"),
    "ortho_init": tiny(model_dim=64, ortho_init=True),
    "doc_mask": tiny(doc_mask=True),
}

ALL_ON = tiny(num_layers=5, mlp_hidden=48, mlp_activation="leaky_relu2", rope_dims=4, rope_train_seq_len=16,
              ln_scale=True, xsa_last_n=3, smear_gate="v2", bigram_buckets=37, bigram_dim=16, bigram_trigram=True,
              value_embed_layers=(1, 4), value_embed_dim=8, skip_gates=True, num_loops=1, loop_start=1, loop_end=2,
              parallel_residual="two_lane", parallel_from=3, attn_gate="sparse", qk_gain_init=4.0, doc_mask=True,
              ortho_init=True)
TECHNIQUES["all_on"] = ALL_ON


def without(cfg: ModelConfig, **overrides: object) -> ModelConfig:
    return dataclasses.replace(cfg, **overrides)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Noise on every parameter, so zero-init projections and gates carry signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def tokens(B: int, T: int, seed: int = 0, low: int = 4) -> torch.Tensor:
    """Random ids without specials (ids below `low`), so no BOS appears unless a test puts one."""
    return torch.randint(low, V, (B, T), generator=torch.Generator().manual_seed(seed))


def build(cfg: ModelConfig, seed: int = 0, backend: str = "sdpa") -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg, attn_backend=backend)
