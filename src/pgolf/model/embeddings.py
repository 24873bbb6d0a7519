"""Token-side inputs of the GPT: the token embedding and everything computed from token ids alone.

The challenge baseline (openai/parameter-golf `train_gpt.py`) looks tokens up in a table that the
tied output head shares, then RMS-normalises the result; that normalised stream is also x0, mixed
back into every block.
"""

from __future__ import annotations

import torch
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.layers import rms_norm, role_embedding


def token_embedding(cfg: ModelConfig) -> nn.Embedding:
    """The token table (role "embedding"); `reset_token_embedding` gives it the baseline's init."""
    return role_embedding(cfg.vocab_size, cfg.model_dim, "embedding")


def reset_token_embedding(emb: nn.Embedding, cfg: ModelConfig) -> None:
    """N(0, tied_embed_init_std) when tied (it is also the output head); PyTorch's N(0, 1) otherwise."""
    if cfg.tie_embeddings:
        nn.init.normal_(emb.weight, mean=0.0, std=cfg.tied_embed_init_std)


def embed_input(input_ids: torch.Tensor, tok_emb: nn.Embedding) -> torch.Tensor:
    """The normalised input stream x0 (B, T, C) for token ids (B, T)."""
    return rms_norm(tok_emb(input_ids))  # (B, T, C)
