"""The model section: the GPT's shape and every architecture technique, each off in the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pgolf.config.checks import require

# Upper bounds of any sane model; they keep a hostile stored config from allocating without limit.
MAX_LAYERS = 1024
MAX_MODEL_DIM = 32_768


@dataclass(kw_only=True)
class ModelConfig:
    """Shape of the GPT: the baseline (9x512, GQA 8/4, ReLU^2 MLP 2x, tied embeddings) and, each off by
    default, the record techniques of openai/parameter-golf (`pgolf.model.specs` says per layer where
    each applies; the reference notes in shared/reference/parameter-golf.md §5.2 give the constants)."""

    vocab_size: int = 1024
    """Token alphabet size; must equal the tokenizer's vocabulary."""
    num_layers: int = 9
    """Transformer blocks; the first half push U-Net skips, the second half pop them."""
    model_dim: int = 512
    """Residual stream width."""
    num_heads: int = 8
    """Query heads; head_dim = model_dim / num_heads."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention); must divide num_heads."""
    mlp_mult: float = 2.0
    """MLP hidden width as a multiple of model_dim (used when mlp_hidden is 0)."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head."""
    tied_embed_init_std: float = 0.005
    """Init std of the (tied) embedding."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    logit_softcap: float = 30.0
    """Logits become softcap * tanh(logits / softcap)."""
    qk_gain_init: float = 1.5
    """Initial value of the learned per-head query gain (records: 4.0 to 5.25)."""
    mlp_hidden: int = 0
    """Explicit MLP hidden width; 0 = int(mlp_mult * model_dim)."""
    mlp_activation: Literal["relu2", "leaky_relu2"] = "relu2"
    """MLP activation: relu(x)^2 (baseline) or leaky_relu(x, 0.5)^2 (PR #493)."""
    rope_dims: int = 0
    """Partial RoPE: rotate only the first rope_dims dims of each head (half-split within them); 0 = all."""
    rope_train_seq_len: int = 0
    """Training length of RoPE: longer sequences get the NTK base rescale; 0 = never rescale."""
    ln_scale: bool = False
    """Multiply both sublayer norm outputs of block i by 1/sqrt(i+1) (physical index, PR #315)."""
    xsa_last_n: int = 0
    """Exclusive self attention on the last N physical blocks; 0 = off, >= num_layers = all."""
    smear_gate: Literal["off", "v1", "v2"] = "off"
    """Blend the previous token's embedding in: v1 a learned per-channel gate after the norm (PR #65),
    v2 an input-dependent gate before it (modded-nanogpt); neither crosses a BOS."""
    smear_gate_window: int = 12
    """Leading embedding dims the v2 smear gate reads."""
    bigram_buckets: int = 0
    """BigramHash table rows B (the last one holds position 0); 0 = off."""
    bigram_dim: int = 128
    """BigramHash table width (projected to model_dim)."""
    bigram_scale_init: float = 0.05
    """Initial learned scale of the BigramHash output."""
    bigram_trigram: bool = False
    """Also look up a hash of (t-2, t-1, t) in the same BigramHash table and add it."""
    value_embed_layers: tuple[int, ...] = ()
    """Physical blocks that add the shared value embedding to their values (e.g. 9,10); empty = off."""
    value_embed_dim: int = 128
    """Width of the shared value-embedding table (projected to the KV width)."""
    skip_gates: bool = False
    """Sigmoid-gated U-Net skips: x = lerp(w_i * skip, x, sigmoid(gate_i)), gates starting at 0."""
    num_loops: int = 0
    """Depth recurrence: run blocks loop_start..loop_end this many extra times; 0 = off."""
    loop_start: int = 0
    """First physical block of the repeated segment."""
    loop_end: int = 0
    """Last physical block of the repeated segment (inclusive)."""
    loop_enable_frac: float = 0.0
    """Fraction of training after which the trainer switches the loops on (GPT.set_looping)."""
    parallel_residual: Literal["off", "gptj", "two_lane"] = "off"
    """Parallel residuals from block parallel_from: GPT-J style x + attn(n(x)) + mlp(n(x)), or two lanes
    with learned mixing in the decoder."""
    parallel_from: int = 0
    """First physical block with parallel residuals."""
    attn_gate: Literal["off", "headwise", "output", "sparse"] = "off"
    """Gate on each head's attention output: dense headwise sigmoid (PR #1992), 2*sigmoid of the first
    attn_gate_window dims (PR #1667) or sigmoid(attn_gate_scale * W x[:window]) (PR #1787)."""
    attn_gate_window: int = 12
    """Leading input dims the output and sparse attention gates read."""
    attn_gate_scale: float = 0.5
    """Logit scale of the sparse attention gate."""
    ortho_init: bool = False
    """Orthogonal init of every linear >= 64x64 that does not start at zero; side projections scaled
    by 1/sqrt(2 * num_layers) (2026-03-22 record)."""
    doc_mask: bool = False
    """Attend only within a document (BOS starts one): varlen flash attention on CUDA, masked SDPA elsewhere."""

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return self.mlp_hidden or int(self.mlp_mult * self.model_dim)

    @property
    def rotary_dims(self) -> int:
        """Dims of each head that RoPE rotates."""
        return self.rope_dims or self.head_dim

    @property
    def num_virtual_layers(self) -> int:
        """Layers run per forward pass with the loops on."""
        return self.num_layers + self.num_loops * (self.loop_end - self.loop_start + 1)

    def validate(self) -> None:
        h, kv, d = self.num_heads, self.num_kv_heads, self.model_dim
        require(3 < self.vocab_size <= 65_536, f"model.vocab_size={self.vocab_size} must be in 4..65536 "
                 "(pad/bos/eos/unk are reserved; shards store uint16 ids)")
        require(1 <= self.num_layers <= MAX_LAYERS, f"model.num_layers={self.num_layers} must be in 1..{MAX_LAYERS}")
        require(1 <= d <= MAX_MODEL_DIM, f"model.model_dim={d} must be in 1..{MAX_MODEL_DIM}")
        require(h >= 1 and d % h == 0, f"model.model_dim={d} is not divisible by model.num_heads={h}")
        require(kv >= 1 and h % kv == 0, f"model.num_heads={h} is not divisible by model.num_kv_heads={kv}")
        require((d // h) % 2 == 0, f"head_dim={d // h} (model.model_dim/model.num_heads) must be even for RoPE")
        require(self.logit_softcap > 0, f"model.logit_softcap={self.logit_softcap} must be > 0")
        require(self.rope_base > 0, f"model.rope_base={self.rope_base} must be > 0")
        require(self.tied_embed_init_std >= 0, f"model.tied_embed_init_std={self.tied_embed_init_std} must be >= 0")
        self._validate_mlp()
        self._validate_attention()
        self._validate_token_side()
        self._validate_layers()

    def _validate_mlp(self) -> None:
        require(self.mlp_mult > 0, f"model.mlp_mult={self.mlp_mult} must be > 0")
        require(0 <= self.mlp_hidden <= 16 * MAX_MODEL_DIM,
                 f"model.mlp_hidden={self.mlp_hidden} must be in 0..{16 * MAX_MODEL_DIM} (0 = model.mlp_mult)")
        require(1 <= self.mlp_hidden_dim <= 16 * MAX_MODEL_DIM,
                 f"model.mlp_mult={self.mlp_mult} must give 1..{16 * MAX_MODEL_DIM} hidden units")

    def _validate_attention(self) -> None:
        hd, rd = self.head_dim, self.rope_dims
        require(rd == 0 or (2 <= rd <= hd and rd % 2 == 0),
                 f"model.rope_dims={rd} must be 0 (all) or an even number in 2..head_dim={hd}")
        require(self.rope_train_seq_len >= 0, f"model.rope_train_seq_len={self.rope_train_seq_len} must be >= 0")
        require(self.rope_train_seq_len == 0 or self.rotary_dims > 2,
                 f"model.rope_train_seq_len needs model.rope_dims > 2 (the NTK exponent is rd/(rd-2)); got {rd}")
        require(self.xsa_last_n >= 0, f"model.xsa_last_n={self.xsa_last_n} must be >= 0 (0 = off)")
        require(1 <= self.attn_gate_window <= self.model_dim,
                 f"model.attn_gate_window={self.attn_gate_window} must be in 1..model.model_dim={self.model_dim}")

    def _validate_token_side(self) -> None:
        b = self.bigram_buckets
        require(b == 0 or 2 <= b <= 1 << 24, f"model.bigram_buckets={b} must be 0 (off) or in 2..{1 << 24}")
        require(1 <= self.bigram_dim <= MAX_MODEL_DIM,
                 f"model.bigram_dim={self.bigram_dim} must be in 1..{MAX_MODEL_DIM}")
        require(not self.bigram_trigram or b > 0, "model.bigram_trigram needs model.bigram_buckets > 0")
        require(1 <= self.smear_gate_window <= self.model_dim,
                 f"model.smear_gate_window={self.smear_gate_window} must be in 1..model.model_dim={self.model_dim}")
        layers = self.value_embed_layers
        require(all(0 <= i < self.num_layers for i in layers) and len(set(layers)) == len(layers),
                 f"model.value_embed_layers={','.join(map(str, layers))} must be distinct block indices in "
                 f"0..{self.num_layers - 1}")
        require(1 <= self.value_embed_dim <= MAX_MODEL_DIM,
                 f"model.value_embed_dim={self.value_embed_dim} must be in 1..{MAX_MODEL_DIM}")

    def _validate_layers(self) -> None:
        n, s, e = self.num_layers, self.loop_start, self.loop_end
        require(self.num_loops >= 0, f"model.num_loops={self.num_loops} must be >= 0 (0 = off)")
        if self.num_loops:
            require(0 <= s <= e < n, f"model.loop_start={s} and model.loop_end={e} must satisfy "
                     f"0 <= loop_start <= loop_end < model.num_layers={n}")
            require(self.num_virtual_layers <= MAX_LAYERS,
                     f"model.num_loops={self.num_loops} gives more than {MAX_LAYERS} virtual layers")
        require(0 <= self.loop_enable_frac <= 1, f"model.loop_enable_frac={self.loop_enable_frac} must be in [0, 1]")
        k = self.parallel_from
        require(0 <= k < n, f"model.parallel_from={k} must be a block index in 0..{n - 1}")
        # Two lanes, once opened, run to the end: a loop that re-enters blocks below K after K is refused.
        require(not (self.parallel_residual == "two_lane" and self.num_loops and s < k <= e),
                 f"model.parallel_from={k} splits the loop {s}..{e}: with model.parallel_residual=two_lane "
                 f"use parallel_from <= loop_start or > loop_end")
