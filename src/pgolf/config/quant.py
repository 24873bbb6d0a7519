"""The quant section: how the trained weights become the artifact (owned by `pgolf.quant`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pgolf.config.checks import require

# Levels each compressor accepts ("none" ignores the level; "best" tries each codec at its highest level).
COMPRESSOR_LEVELS: dict[str, tuple[int, int]] = {"zlib": (0, 9), "zstd": (1, 22), "brotli": (0, 11), "lzma": (0, 9)}

ClipRule = Literal["percentile", "gptq_lite", "sdclip"]


@dataclass(kw_only=True)
class QuantConfig:
    """How the trained weights become the artifact (owned by `pgolf.quant`). The defaults are the
    baseline's export: per-row int8 with a percentile clip, fp16 scales, small tensors kept in float,
    zlib level 9. Everything after `level` is off by default and used by `scheme = "intx"`."""

    scheme: Literal["int8_per_row", "intx"] = "int8_per_row"
    """`int8_per_row`: the baseline's export, bit for bit; `intx`: role-driven intN (matrix_bits, embed_bits)."""
    clip_percentile: float = 99.99984
    """Per-row clip at this percentile of |w| (the baseline's INT8_CLIP_PERCENTILE; the `percentile` rule)."""
    keep_float_max_numel: int = 65_536
    """Float tensors with at most this many elements are stored as float (fp16; control tensors fp32)."""
    compressor: Literal["zlib", "zstd", "brotli", "lzma", "none", "best"] = "zlib"
    """Byte compressor of the packed payload; `best` tries zlib-9, zstd-22, brotli-11, lzma-9 and keeps the smallest."""
    level: int = 9
    """Compressor level (zlib 0-9, zstd 1-22, brotli 0-11, lzma 0-9; ignored by none and best)."""
    matrix_bits: int = 6
    """intx: bits of block matrices (symmetric per-row int2..int8, fp16 scales)."""
    embed_bits: int = 8
    """intx: bits of the token embedding, an untied head and side tables."""
    gate_bits: int = 8
    """intx: bits of gate projections (per row)."""
    matrix_clip: ClipRule = "percentile"
    """intx: clip rule of matrices: percentile, gptq_lite (best of quant.gptq_lite_quantiles per row) or sdclip."""
    embed_clip: ClipRule = "percentile"
    """intx: clip rule of embeddings, heads and tables."""
    gptq_lite_quantiles: tuple[float, ...] = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
    """Quantiles of |w| tried per row by the gptq_lite rule; the one with the lowest reconstruction error wins."""
    sdclip_k: tuple[float, ...] = (12.85,)
    """SDClip multiplier(s) k of matrices: scale = k*std(row)/qmax; several values are searched per row."""
    sdclip_k_embed: tuple[float, ...] = (20.0,)
    """SDClip k of embeddings, heads and tables."""
    sdclip_k_mlp: tuple[float, ...] = ()
    """SDClip k of MLP matrices (empty = quant.sdclip_k)."""
    sdclip_k_attn: tuple[float, ...] = ()
    """SDClip k of attention matrices (empty = quant.sdclip_k)."""
    group_size: int = 0
    """intx: columns sharing one scale (0 = one scale per row); rows it does not divide keep one scale."""
    control_dtype: Literal["float32", "float16"] = "float32"
    """intx: storage dtype of control tensors (scales, mixes, gains), which are never quantised."""
    gptq: bool = False
    """Full-Hessian GPTQ on every quantised linear (Hessians from calibration batches)."""
    gptq_calibration: Literal["train", "self"] = "train"
    """Calibration text: `train` shards, or `self`: sequences sampled from the model itself (no data)."""
    gptq_batches: int = 16
    """Calibration sequences."""
    gptq_seq_len: int = 0
    """Calibration sequence length (0 = train.train_seq_len)."""
    gptq_damp: float = 0.01
    """Damping added to the Hessian diagonal, as a fraction of its mean."""
    gptq_block_size: int = 128
    """Columns per GPTQ block (error is propagated lazily between blocks)."""
    gptq_act_order: bool = True
    """Quantise columns in order of decreasing Hessian diagonal."""
    gptq_temperature: float = 0.8
    """Sampling temperature of self-generated calibration text."""
    allocate_bits: bool = False
    """Choose bits per tensor in quant.min_bits..quant.max_bits from sensitivity so the artifact fits the budget."""
    min_bits: int = 5
    """Lowest bits the allocation may give a tensor."""
    max_bits: int = 8
    """Highest bits the allocation may give a tensor."""
    prune: bool = False
    """Selective +-1 pruning: zero the cheapest +-1 codes until the artifact fits the budget."""
    lqer_rank: int = 0
    """LQER: rank of the low-rank correction of the worst tensors (0 = off)."""
    lqer_top_k: int = 3
    """LQER: number of tensors corrected (largest reconstruction error first)."""
    lqer_a_bits: int = 2
    """LQER: bits of the left factor A (one scale per tensor)."""
    lqer_b_bits: int = 4
    """LQER: bits of the right factor B (group scales)."""
    lqer_group_size: int = 64
    """LQER: columns per scale group of B (tensors whose rows it does not divide are not corrected)."""
    packing: Literal["int8", "bitpack"] = "int8"
    """Integer codes stored one per byte (compresses best) or bit-packed."""
    byte_shuffle: bool = False
    """Store multi-byte streams (scales, floats) as byte planes, which compress better."""
    transpose_codes: bool = False
    """Store each matrix's codes column by column."""
    enforce_budget: bool = False
    """Refuse to write an artifact over the budget (exit 2 with the per-tensor byte table); implied by
    quant.allocate_bits and quant.prune."""
    margin_bytes: int = 0
    """Bytes kept free under budget.artifact_max_bytes when fitting (compressed size varies between seeds)."""

    @property
    def fits_budget(self) -> bool:
        """Whether export searches or enforces the byte budget."""
        return self.enforce_budget or self.allocate_bits or self.prune

    def validate(self) -> None:
        require(0 < self.clip_percentile <= 100, f"quant.clip_percentile={self.clip_percentile} must be in (0, 100]")
        require(self.keep_float_max_numel >= 0, f"quant.keep_float_max_numel={self.keep_float_max_numel} must be >= 0")
        lo, hi = COMPRESSOR_LEVELS.get(self.compressor, (self.level, self.level))
        require(lo <= self.level <= hi, f"quant.level={self.level} is out of range for quant.compressor="
                                         f"{self.compressor} ({lo}-{hi})")
        for name in ("matrix_bits", "embed_bits", "gate_bits", "min_bits", "max_bits"):
            require(2 <= getattr(self, name) <= 8, f"quant.{name}={getattr(self, name)} must be in 2..8")
        require(self.min_bits <= self.max_bits, f"quant.min_bits={self.min_bits} must be <= quant.max_bits={self.max_bits}")
        require(bool(self.gptq_lite_quantiles) and all(0 < q <= 1 for q in self.gptq_lite_quantiles),
                 f"quant.gptq_lite_quantiles={self.gptq_lite_quantiles} must be quantiles in (0, 1]")
        for name in ("sdclip_k", "sdclip_k_embed", "sdclip_k_mlp", "sdclip_k_attn"):
            ks = getattr(self, name)
            require(all(math.isfinite(k) and k > 0 for k in ks), f"quant.{name}={ks} must hold numbers > 0")
        require(bool(self.sdclip_k) and bool(self.sdclip_k_embed), "quant.sdclip_k and quant.sdclip_k_embed need a value")
        require(self.group_size >= 0, f"quant.group_size={self.group_size} must be >= 0")
        require(self.gptq_batches >= 1, f"quant.gptq_batches={self.gptq_batches} must be >= 1")
        require(self.gptq_seq_len >= 0, f"quant.gptq_seq_len={self.gptq_seq_len} must be >= 0")
        require(0 <= self.gptq_damp <= 1, f"quant.gptq_damp={self.gptq_damp} must be in [0, 1]")
        require(self.gptq_block_size >= 1, f"quant.gptq_block_size={self.gptq_block_size} must be >= 1")
        require(self.gptq_temperature > 0, f"quant.gptq_temperature={self.gptq_temperature} must be > 0")
        require(self.lqer_rank >= 0, f"quant.lqer_rank={self.lqer_rank} must be >= 0")
        require(self.lqer_top_k >= 1, f"quant.lqer_top_k={self.lqer_top_k} must be >= 1")
        for name in ("lqer_a_bits", "lqer_b_bits"):
            require(2 <= getattr(self, name) <= 8, f"quant.{name}={getattr(self, name)} must be in 2..8")
        require(self.lqer_group_size >= 1, f"quant.lqer_group_size={self.lqer_group_size} must be >= 1")
        require(self.margin_bytes >= 0, f"quant.margin_bytes={self.margin_bytes} must be >= 0")
        require(self.scheme == "intx" or not (self.gptq or self.allocate_bits or self.lqer_rank or self.group_size),
                 "quant.gptq, quant.allocate_bits, quant.lqer_rank and quant.group_size need quant.scheme=intx")
