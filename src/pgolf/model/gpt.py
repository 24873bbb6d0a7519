"""The GPT of the challenge baseline (openai/parameter-golf `train_gpt.py`), run from a per-layer plan.

Notable against a textbook GPT: parameter-free RMS norms (also on the embedding, whose output x0 is
mixed back into every block through `resid_mix`), per-channel `attn_scale`/`mlp_scale`, zero-init
output projections so every block starts as the identity, U-Net skips (encoder layers push their
outputs, decoder layers pop them through learned `skip_weights`), a tied output head, and a tanh
logit softcap. Parameters stay fp32; compute is bf16 under autocast; logits and losses are fp32.

Blocks are built from `block_specs` and `hidden_states` walks the plan of `layer_specs`
(`pgolf.model.specs`). Techniques of the records owned here: sigmoid-gated skips (PR #1089),
depth recurrence with its encoder/decoder split over the virtual order (2026-04-05 record; the
trainer switches it with `set_looping`), parallel residuals (GPT-J style, 2026-04-06 record; two
lanes with learned mixing, 2026-03-31 and 2026-04-27 records) and OrthoInit (2026-03-22 record).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention, check_backend
from pgolf.model.documents import Documents, locate_documents
from pgolf.model.embeddings import (BigramHashEmbedding, SmearGate, ValueEmbedding, embed_input,
                                    reset_token_embedding, token_embedding)
from pgolf.model.layers import CastedLinear, Rotary, rms_norm
from pgolf.model.mlp import MLP
from pgolf.model.specs import LayerSpec, block_specs, layer_specs, num_encoder_layers, num_skip_weights

PARALLEL_RESID_INIT = 1.1  # two-lane carry of each lane (2026-03-31 record)


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in all parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class Block(nn.Module):
    """Pre-norm block: mix in x0, then scaled attention and scaled MLP residual updates.

    Sequential (the baseline), GPT-J parallel (both sublayers read the same normed input) when its
    spec says so, or one step of the two-lane residual through `forward_lanes`."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, attn_backend: str) -> None:
        super().__init__()
        dim = cfg.model_dim
        self.attn = CausalSelfAttention(cfg, spec, attn_backend)
        self.mlp = MLP(cfg, spec)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # rows (1, 0): the block starts reading only the running stream, none of x0
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())
        self.ln_scale = spec.ln_scale
        self.gptj = spec.residual == "gptj"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x) if self.ln_scale == 1.0 else rms_norm(x) * self.ln_scale

    def _read(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)  # (2, C)
        return mix[0][None, None, :] * x + mix[1][None, None, :] * x0  # (B, T, C)

    def forward(self, x: torch.Tensor, x0: torch.Tensor, value_embed: torch.Tensor | None = None,
                docs: Documents | None = None, keep_from: int = 0) -> torch.Tensor:
        """The block's output (B, T - keep_from, C) at the positions from `keep_from` on (attention still
        reads every position of x (B, T, C))."""
        x = self._read(x, x0)
        if self.gptj:
            n = self._norm(x)
            return (x[:, keep_from:] + self.attn_scale.to(x.dtype)[None, None, :] * self.attn(n, value_embed, docs,
                                                                                                  keep_from)
                    + self.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(n[:, keep_from:]))
        x = x[:, keep_from:] + self.attn_scale.to(x.dtype)[None, None, :] * self.attn(self._norm(x), value_embed,
                                                                                      docs, keep_from)
        x = x + self.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(self._norm(x))
        return x

    def forward_lanes(self, lane0: torch.Tensor, lane1: torch.Tensor, x0: torch.Tensor, post: torch.Tensor,
                      resid: torch.Tensor, value_embed: torch.Tensor | None = None,
                      docs: Documents | None = None, keep_from: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-lane step: attention reads lane0 (mixed with x0), the MLP reads lane1; post (2, 2) routes
        [attn, mlp] x [lane0, lane1], resid (2,) carries each lane. Lanes out at the positions from keep_from."""
        dt = lane0.dtype
        attn_in = self._norm(self._read(lane0, x0))  # (B, T, C)
        attn_out = self.attn_scale.to(dt)[None, None, :] * self.attn(attn_in, value_embed, docs, keep_from)
        lane0, lane1 = lane0[:, keep_from:], lane1[:, keep_from:]  # (B, T', C)
        mlp_out = self.mlp_scale.to(dt)[None, None, :] * self.mlp(self._norm(lane1))
        p, r = post.to(dt), resid.to(dt)
        new0 = r[0] * lane0 + p[0, 0] * attn_out + p[1, 0] * mlp_out  # (B, T', C)
        new1 = r[1] * lane1 + p[0, 1] * attn_out + p[1, 1] * mlp_out  # (B, T', C)
        return new0, new1


class GPT(nn.Module):
    """The language model; `forward` returns the mean fp32 cross-entropy.

    Built with depth recurrence on (the full virtual plan), so a loaded artifact evaluates what was
    trained last; the trainer calls `set_looping(False)` for the early part of training."""

    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        cfg.validate()
        check_backend(attn_backend)
        self.cfg = cfg
        self.attn_backend = attn_backend
        self._plans = {True: layer_specs(cfg, looping=True), False: layer_specs(cfg, looping=False)}
        self.looping = cfg.num_loops > 0
        self.tok_emb = token_embedding(cfg)
        self.bigram = BigramHashEmbedding(cfg) if cfg.bigram_buckets else None
        self.smear = SmearGate(cfg) if cfg.smear_gate != "off" else None
        self.value_embed = ValueEmbedding(cfg) if cfg.value_embed_layers else None
        num_skips = num_skip_weights(cfg)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        # sigmoid(0) = 1/2: each gated skip starts as an even mix of stream and skip
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, cfg.model_dim)) if cfg.skip_gates else None
        self.blocks = nn.ModuleList(Block(cfg, spec, attn_backend) for spec in block_specs(cfg))
        self.parallel_post_lambdas: nn.Parameter | None = None
        self.parallel_resid_lambdas: nn.Parameter | None = None
        if cfg.parallel_residual == "two_lane":
            self.parallel_post_lambdas = nn.Parameter(torch.ones(cfg.num_layers, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((cfg.num_layers, 2), PARALLEL_RESID_INIT))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, role="head")
        self._init_weights()

    @property
    def plan(self) -> list[LayerSpec]:
        """The active plan: the looped virtual order while looping is on, else one layer per block."""
        return self._plans[self.looping]

    def set_looping(self, on: bool) -> None:
        """Switch depth recurrence (a plain attribute: a compiled model recompiles once per setting)."""
        self.looping = bool(on)

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
        cfg = self.cfg
        reset_token_embedding(self.tok_emb, cfg)
        for block in self.blocks:
            block.attn.reset_parameters(cfg.ortho_init)
            block.mlp.reset_parameters(cfg.ortho_init)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)
        # OrthoInit leaves the zero-init block projections at zero (as every record does); the side
        # projections, zero without it, become orthogonal / sqrt(2L) as in the 2026-03-22 record.
        side_scale = 1.0 / math.sqrt(2 * cfg.num_layers) if cfg.ortho_init else 0.0
        if self.bigram is not None:
            self.bigram.reset_parameters(side_scale)
        if self.smear is not None:
            self.smear.reset_parameters()
        if self.value_embed is not None:
            self.value_embed.reset_parameters(side_scale)

    def _merge_skip(self, x: torch.Tensor, skip: torch.Tensor, i: int) -> torch.Tensor:
        """U-Net skip into the stream before a decoder layer: added, or lerp(w * skip, x, sigmoid(gate))."""
        scaled = self.skip_weights[i].to(x.dtype)[None, None, :] * skip  # (B, T, C)
        if self.skip_gates is None:
            return x + scaled
        gate = torch.sigmoid(self.skip_gates[i].to(x.dtype))[None, None, :]  # (1, 1, C)
        return torch.lerp(scaled, x, gate)  # (B, T, C)

    def hidden_states(self, input_ids: torch.Tensor, keep_from: int = 0) -> torch.Tensor:
        """Final-normed residual stream (B, T - keep_from, C) for token ids (B, T): the positions from
        `keep_from` on. The last layer computes only those (a sliding window's scored columns); earlier
        layers compute every position, which the last one attends to."""
        x = embed_input(input_ids, self.tok_emb, self.bigram, self.smear)  # (B, T, C)
        x0 = x
        ve = self.value_embed(input_ids) if self.value_embed is not None else None  # (B, T, KV*D)
        docs = locate_documents(input_ids, self.attn_backend) if self.cfg.doc_mask else None
        skips: list[torch.Tensor] = []
        lanes: tuple[torch.Tensor, torch.Tensor] | None = None
        # the varlen path attends whole segments: it computes every position and slices at the end
        last_cut = 0 if docs is not None and docs.mask is None else keep_from
        last = len(self.plan) - 1
        for i, spec in enumerate(self.plan):
            block = self.blocks[spec.block]
            cut = last_cut if i == last else 0
            if spec.residual == "two_lane":
                lane0, lane1 = lanes if lanes is not None else (x, x)
                if spec.skip_index >= 0:
                    lane0 = self._merge_skip(lane0, skips[spec.skip_source], spec.skip_index)
                assert self.parallel_post_lambdas is not None and self.parallel_resid_lambdas is not None
                lanes = block.forward_lanes(lane0, lane1, x0, self.parallel_post_lambdas[spec.block],
                                            self.parallel_resid_lambdas[spec.block], ve, docs, cut)
                continue
            if spec.skip_index >= 0:
                x = self._merge_skip(x, skips[spec.skip_source], spec.skip_index)
            x = block(x, x0, ve, docs, cut)
            if spec.side == "encoder":
                skips.append(x)
        if lanes is not None:
            x = 0.5 * (lanes[0] + lanes[1])  # final hidden: the mean of the lanes
        return rms_norm(x[:, keep_from - last_cut:])

    def grow_rope(self, seq_len: int) -> None:
        """Build every RoPE table for sequences of `seq_len` now (call before compiling; see `Rotary.grow`)."""
        for module in self.modules():
            if isinstance(module, Rotary):
                module.grow(seq_len)

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
