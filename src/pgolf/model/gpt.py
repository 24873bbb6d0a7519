"""The GPT of the challenge baseline (openai/parameter-golf `train_gpt.py`), run from a per-layer plan.

Notable against a textbook GPT: parameter-free RMS norms (also on the embedding, whose output x0 is
mixed back into every block through `resid_mix`), per-channel `attn_scale`/`mlp_scale`, zero-init
output projections so every block starts as the identity, U-Net skips (encoder layers push their
outputs, decoder layers pop them through learned `skip_weights`), a tied output head, and a tanh
logit softcap. Parameters stay fp32; compute is bf16 under autocast; logits and losses are fp32.

Blocks are built from `block_specs` and `hidden_states` walks the plan of `layer_specs`
(`pgolf.model.specs`), so which block runs where, and how, is decided in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention, check_backend
from pgolf.model.embeddings import embed_input, reset_token_embedding, token_embedding
from pgolf.model.layers import CastedLinear, rms_norm
from pgolf.model.mlp import MLP
from pgolf.model.specs import LayerSpec, block_specs, layer_specs, num_encoder_layers, num_skip_weights


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in all parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class Block(nn.Module):
    """Pre-norm block: mix in x0, then scaled attention and scaled MLP residual updates."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, attn_backend: str) -> None:
        super().__init__()
        dim = cfg.model_dim
        self.attn = CausalSelfAttention(cfg, spec, attn_backend)
        self.mlp = MLP(cfg, spec)
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


class GPT(nn.Module):
    """The language model; `forward` returns the mean fp32 cross-entropy."""

    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        cfg.validate()
        check_backend(attn_backend)
        self.cfg = cfg
        self.attn_backend = attn_backend
        self.plan = layer_specs(cfg, looping=True)
        self.tok_emb = token_embedding(cfg)
        self.skip_weights = nn.Parameter(torch.ones(num_skip_weights(cfg), cfg.model_dim, dtype=torch.float32))
        self.blocks = nn.ModuleList(Block(cfg, spec, attn_backend) for spec in block_specs(cfg))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, role="head")
        self._init_weights()

    @property
    def num_encoder_layers(self) -> int:
        """Encoder layers of the active plan."""
        return num_encoder_layers(len(self.plan))

    @property
    def num_decoder_layers(self) -> int:
        """Decoder layers of the active plan."""
        return len(self.plan) - self.num_encoder_layers

    def _init_weights(self) -> None:
        # Other linears keep nn.Linear's default init, as the baseline; the untied embedding keeps N(0, 1).
        reset_token_embedding(self.tok_emb, self.cfg)
        for block in self.blocks:
            block.attn.reset_parameters()
            block.mlp.reset_parameters()
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)

    def _merge_skip(self, x: torch.Tensor, skip: torch.Tensor, i: int) -> torch.Tensor:
        """U-Net skip into the stream before decoder layer i."""
        return x + self.skip_weights[i].to(x.dtype)[None, None, :] * skip

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-normed residual stream (B, T, C) for token ids (B, T)."""
        x = embed_input(input_ids, self.tok_emb)  # (B, T, C)
        x0 = x
        skips: list[torch.Tensor] = []
        for spec in self.plan:
            if spec.skip_index >= 0:
                x = self._merge_skip(x, skips[spec.skip_source], spec.skip_index)
            x = self.blocks[spec.block](x, x0)
            if spec.side == "encoder":
                skips.append(x)
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
