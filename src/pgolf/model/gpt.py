"""The challenge baseline GPT (openai/parameter-golf `train_gpt.py`): 9x512, GQA, ReLU^2, U-Net skips.

Notable against a textbook GPT: parameter-free RMS norms (also on the embedding, whose output x0 is
mixed back into every block through `resid_mix`), per-channel `attn_scale`/`mlp_scale`, zero-init
output projections so every block starts as the identity, U-Net skips (the first half of the blocks
push their outputs, the second half pop them through learned `skip_weights`), a tied output head,
and a tanh logit softcap. Parameters stay fp32; compute is bf16 under autocast; logits and losses
are fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention, check_backend
from pgolf.model.layers import CastedLinear, rms_norm, role_embedding

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


class GPT(nn.Module):
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
