"""Typed run configuration: one kw-only dataclass per stage, validated where built.

Every field has a default equal to the challenge baseline (openai/parameter-golf `train_gpt.py`,
`Hyperparameters`) unless its comment says otherwise; presets in `presets.py` override fields.
The CLI exposes each field as `--section.field`. The resolved config is written into every log
header and every artifact, and hashed (`config_hash`) so two runs can be compared at a glance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration a user wrote that cannot run; the message names the flag and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_finite(section: Any, prefix: str) -> None:
    """Every float field of a section is a finite number (NaN and inf slip past range checks)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            _require(math.isfinite(value), f"{prefix}.{f.name}={value} must be a finite number")


# Upper bounds of any sane model; they keep a hostile stored config from allocating without limit.
MAX_LAYERS = 1024
MAX_MODEL_DIM = 32_768


@dataclass(kw_only=True)
class ModelConfig:
    """Shape of the baseline GPT (9x512, GQA 8/4, ReLU^2 MLP 2x, tied embeddings)."""

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
    """MLP hidden width as a multiple of model_dim."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head."""
    tied_embed_init_std: float = 0.005
    """Init std of the (tied) embedding."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    logit_softcap: float = 30.0
    """Logits become softcap * tanh(logits / softcap)."""
    qk_gain_init: float = 1.5
    """Initial value of the learned per-head query gain."""

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    def validate(self) -> None:
        h, kv, d = self.num_heads, self.num_kv_heads, self.model_dim
        _require(3 < self.vocab_size <= 65_536, f"model.vocab_size={self.vocab_size} must be in 4..65536 "
                 "(pad/bos/eos/unk are reserved; shards store uint16 ids)")
        _require(1 <= self.num_layers <= MAX_LAYERS, f"model.num_layers={self.num_layers} must be in 1..{MAX_LAYERS}")
        _require(1 <= d <= MAX_MODEL_DIM, f"model.model_dim={d} must be in 1..{MAX_MODEL_DIM}")
        _require(h >= 1 and d % h == 0, f"model.model_dim={d} is not divisible by model.num_heads={h}")
        _require(kv >= 1 and h % kv == 0, f"model.num_heads={h} is not divisible by model.num_kv_heads={kv}")
        _require((d // h) % 2 == 0, f"head_dim={d // h} (model.model_dim/model.num_heads) must be even for RoPE")
        _require(self.mlp_hidden_dim >= 1, f"model.mlp_mult={self.mlp_mult} gives an empty MLP")
        _require(self.logit_softcap > 0, f"model.logit_softcap={self.logit_softcap} must be > 0")
        _require(self.rope_base > 0, f"model.rope_base={self.rope_base} must be > 0")
        _require(self.tied_embed_init_std >= 0, f"model.tied_embed_init_std={self.tied_embed_init_std} must be >= 0")
        _require(self.mlp_mult > 0 and self.mlp_hidden_dim <= 16 * MAX_MODEL_DIM,
                 f"model.mlp_mult={self.mlp_mult} must be > 0 and give at most {16 * MAX_MODEL_DIM} hidden units")


@dataclass(kw_only=True)
class OptimConfig:
    """Muon for 2-D block matrices, Adam for embeddings, head, scalars and control tensors."""

    matrix_lr: float = 0.04
    """Muon learning rate for 2-D weights inside blocks."""
    scalar_lr: float = 0.04
    """Adam learning rate for vectors, scalars and control tensors (scales, mixes, gains, skip weights)."""
    tied_embed_lr: float = 0.05
    """Adam learning rate of the tied embedding."""
    embed_lr: float = 0.6
    """Adam learning rate of the input embedding when embeddings are untied."""
    head_lr: float = 0.008
    """Adam learning rate of the output head when embeddings are untied."""
    muon_momentum: float = 0.95
    """Muon Nesterov momentum after warm-up."""
    muon_momentum_warmup_start: float = 0.85
    """Muon momentum at step 0, raised linearly to muon_momentum."""
    muon_momentum_warmup_steps: int = 500
    """Steps over which Muon momentum warms up."""
    muon_backend_steps: int = 5
    """Newton-Schulz iterations per Muon update."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    grad_clip_norm: float = 0.0
    """Global gradient-norm clip; 0 disables."""
    muon_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Dtype of the Newton-Schulz iteration; `auto` as train.dtype (bfloat16 where it is native)."""

    def validate(self) -> None:
        for name in ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr"):
            _require(getattr(self, name) >= 0, f"optim.{name}={getattr(self, name)} must be >= 0")
        _require(0 <= self.muon_momentum < 1, f"optim.muon_momentum={self.muon_momentum} must be in [0, 1)")
        _require(self.muon_backend_steps >= 1, f"optim.muon_backend_steps={self.muon_backend_steps} must be >= 1")
        _require(self.grad_clip_norm >= 0, f"optim.grad_clip_norm={self.grad_clip_norm} must be >= 0")


@dataclass(kw_only=True)
class TrainConfig:
    """Batch geometry, step budget and wall-clock schedule."""

    train_batch_tokens: int = 524_288
    """Global tokens per optimiser step, the same at every world size."""
    train_seq_len: int = 1024
    """Training sequence length."""
    grad_accum_steps: int = 8
    """Micro-batches per step summed over all ranks; each rank runs grad_accum_steps / world_size."""
    iterations: int = 20_000
    """Maximum optimiser steps (the wall-clock budget usually stops training first)."""
    warmdown_iters: int = 1200
    """LR decays linearly to 0 over the time these last steps are estimated to take."""
    warmup_steps: int = 20
    """Compile/priming steps run before the clock starts, then undone (weights, optimiser, loader)."""
    max_wallclock_seconds: float = 600.0
    """Training budget in seconds, excluding evaluation pauses and warm-up; 0 disables."""
    val_loss_every: int = 1000
    """Evaluate on validation every N steps (clock paused); 0 disables periodic evaluation."""
    train_log_every: int = 200
    """Write a log line every N steps."""
    seed: int = 1337
    """Seed of the model init (and of the data order when data_order is `seeded`)."""
    data_order: Literal["challenge", "seeded"] = "challenge"
    """`challenge`: shards in name order from token 0, as the baseline reads them; `seeded`: a shard
    permutation and start offset drawn from the seed."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Compute dtype of forward passes: bfloat16 autocast (the loss stays fp32) or plain float32; `auto` is
    bfloat16 on CUDA and on CPUs with native bf16 instructions, float32 elsewhere (emulated bf16 is slower)."""
    compile: bool = False
    """torch.compile the model (costs a cold start; worth it for long runs on GPU)."""

    def validate(self) -> None:
        _require(self.train_seq_len >= 2, f"train.train_seq_len={self.train_seq_len} must be >= 2")
        _require(self.grad_accum_steps >= 1, f"train.grad_accum_steps={self.grad_accum_steps} must be >= 1")
        per_micro = self.train_batch_tokens // self.grad_accum_steps
        _require(
            self.train_batch_tokens % self.grad_accum_steps == 0 and per_micro % self.train_seq_len == 0 and per_micro > 0,
            f"train.train_batch_tokens={self.train_batch_tokens} must split into train.grad_accum_steps="
            f"{self.grad_accum_steps} micro-batches of whole train.train_seq_len={self.train_seq_len} sequences",
        )
        _require(self.iterations >= 1, f"train.iterations={self.iterations} must be >= 1")
        _require(self.warmdown_iters >= 0, f"train.warmdown_iters={self.warmdown_iters} must be >= 0")
        _require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be >= 0")
        _require(self.max_wallclock_seconds >= 0, f"train.max_wallclock_seconds={self.max_wallclock_seconds} must be >= 0")
        _require(0 <= self.seed < 2**63, f"train.seed={self.seed} must be in 0..2^63-1")
        _require(self.val_loss_every >= 0, f"train.val_loss_every={self.val_loss_every} must be >= 0")
        _require(self.train_log_every >= 1, f"train.train_log_every={self.train_log_every} must be >= 1")


@dataclass(kw_only=True)
class DataConfig:
    """Where the prepared shards and the tokenizer live (challenge layout); by default both follow
    from data.source and model.vocab_size, so a preset names its vocabulary once."""

    source: Literal["embedded", "fineweb"] = "embedded"
    """`embedded`: `pgolf run` prepares the shipped corpus itself; `fineweb`: shards come from `pgolf data fineweb`."""
    root: str = "data"
    """Folder holding datasets/ and tokenizers/ (the challenge's `data/` layout)."""
    dataset_dir: str = ""
    """Folder of fineweb_{train,val}_*.bin; empty = ROOT/datasets/embedded_spV or fineweb10B_spV (V = model.vocab_size)."""
    tokenizer_path: str = ""
    """SentencePiece model; empty = ROOT/tokenizers/embedded_V_bpe.model or fineweb_V_bpe.model."""

    def validate(self) -> None:
        _require(not self.tokenizer_path or self.tokenizer_path.endswith(".model"),
                 f"data.tokenizer_path={self.tokenizer_path!r} must be a SentencePiece .model file")
        _require(bool(self.root), "data.root must not be empty")

    def paths(self, vocab_size: int) -> tuple[str, str]:
        """(dataset folder, tokenizer file) for a vocabulary: the explicit fields, else the layout's names."""
        prefix = "embedded" if self.source == "embedded" else "fineweb"
        folder = f"embedded_sp{vocab_size}" if self.source == "embedded" else f"fineweb10B_sp{vocab_size}"
        dataset = self.dataset_dir or f"{self.root}/datasets/{folder}"
        tokenizer = self.tokenizer_path or f"{self.root}/tokenizers/{prefix}_{vocab_size}_bpe.model"
        return dataset, tokenizer


@dataclass(kw_only=True)
class PrepareConfig:
    """Embedded corpus -> tokenizer -> shards."""

    val_target_bytes: int = 800_000
    """Approximate validation size in UTF-8 bytes (about 300k tokens at vocab 1024); whole documents are
    drawn from every source in equal shares until it is reached."""
    shard_tokens: int = 100_000_000
    """Maximum tokens per shard file (the challenge uses 10^8)."""
    tokenizer_train_bytes: int = 40_000_000
    """Cap on training text fed to the tokenizer trainer (bytes of UTF-8)."""
    split_seed: int = 0
    """Seed of the deterministic train/validation document split."""
    max_docs_per_source: int = 0
    """Use only the first N documents of each source (quick checks; 0 = the whole corpus)."""
    force: bool = False
    """Rebuild even when prepared files with the same fingerprint exist."""

    def validate(self) -> None:
        _require(self.val_target_bytes > 0, f"prepare.val_target_bytes={self.val_target_bytes} must be > 0")
        _require(self.shard_tokens > 0, f"prepare.shard_tokens={self.shard_tokens} must be > 0")


# Levels each compressor accepts ("none" ignores the level).
COMPRESSOR_LEVELS: dict[str, tuple[int, int]] = {"zlib": (0, 9), "zstd": (1, 22), "brotli": (0, 11), "lzma": (0, 9)}


@dataclass(kw_only=True)
class QuantConfig:
    """The baseline export: per-row int8 with a percentile clip, fp16 scales, small tensors kept in float."""

    scheme: Literal["int8_per_row"] = "int8_per_row"
    """Quantisation scheme of 2-D weights."""
    clip_percentile: float = 99.99984
    """Per-row clip at this percentile of |w| (the baseline's INT8_CLIP_PERCENTILE)."""
    keep_float_max_numel: int = 65_536
    """Float tensors with at most this many elements are stored as float (fp16; control tensors fp32)."""
    compressor: Literal["zlib", "zstd", "brotli", "lzma", "none"] = "zlib"
    """Byte compressor of the packed container."""
    level: int = 9
    """Compressor level (zlib 0-9, zstd 1-22, brotli 0-11, lzma 0-9)."""

    def validate(self) -> None:
        _require(0 < self.clip_percentile <= 100, f"quant.clip_percentile={self.clip_percentile} must be in (0, 100]")
        _require(self.keep_float_max_numel >= 0, f"quant.keep_float_max_numel={self.keep_float_max_numel} must be >= 0")
        lo, hi = COMPRESSOR_LEVELS.get(self.compressor, (self.level, self.level))
        _require(lo <= self.level <= hi, f"quant.level={self.level} is out of range for quant.compressor="
                                         f"{self.compressor} ({lo}-{hi})")


@dataclass(kw_only=True)
class EvalConfig:
    """Validation geometry."""

    seq_len: int = 0
    """Evaluation window length; 0 means train.train_seq_len."""
    stride: int = 0
    """Sliding-window stride (each window scores its last `stride` tokens); 0 means seq_len (non-overlapping)."""
    batch_tokens: int = 524_288
    """Tokens per evaluation forward pass, summed over ranks."""
    max_tokens: int = 0
    """Evaluate only the first N validation tokens (for quick checks; 0 = all). Reported in the summary."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Compute dtype of evaluation forward passes (TTT steps included); `auto` as train.dtype."""
    ttt: Literal["none", "chunked", "lora"] = "none"
    """Score-first test-time training of the final evaluation: `none` (fixed predictor), `chunked` (SGD on the
    whole model after each scored 32k-token chunk), `lora` (per-document LoRA updated after each scored chunk of
    the document). Settings in the ttt section."""

    def validate(self) -> None:
        _require(self.seq_len >= 0, f"eval.seq_len={self.seq_len} must be >= 0")
        _require(self.stride >= 0, f"eval.stride={self.stride} must be >= 0")
        _require(0 < self.batch_tokens <= 1 << 24, f"eval.batch_tokens={self.batch_tokens} must be in 1..{1 << 24}")
        _require(self.max_tokens >= 0, f"eval.max_tokens={self.max_tokens} must be >= 0")
        if self.seq_len and self.stride:
            _require(self.stride <= self.seq_len, f"eval.stride={self.stride} must be <= eval.seq_len={self.seq_len}")


@dataclass(kw_only=True)
class TTTConfig:
    """Score-first test-time training (`eval.ttt`): chunked full-model SGD (parameter-golf 2026-03-23
    LegalTTT) and per-document LoRA (2026-04-10 VarLenAttn onwards). The chunked defaults are the records';
    the LoRA defaults are sized for the CPU track's small models (each field names the records' value)."""

    chunk_tokens: int = 32_768
    """`chunked`: tokens per chunk; each chunk's windows are scored, then the model trains on the chunk."""
    lr: float = 0.002
    """`chunked`: SGD learning rate of the first chunk (cosine to 0 over the chunks; records: 0.002 at sp1024)."""
    momentum: float = 0.9
    """`chunked`: SGD momentum."""
    epochs: int = 3
    """`chunked`: passes over each scored chunk."""
    batch_seqs: int = 32
    """`chunked`: sequences of eval seq_len per SGD step, summed over ranks."""
    grad_clip: float = 1.0
    """`chunked`: global gradient-norm clip of each step; 0 disables."""
    lora_rank: int = 8
    """`lora`: adapter rank on attention q/k/v/out, the MLP output and the head (records: 80-96 at 512 wide)."""
    lora_alpha: float = 16.0
    """`lora`: adapter scale is lora_alpha / lora_rank."""
    lora_lr: float = 0.001
    """`lora`: Adam learning rate of the one step after each scored chunk (records: 1e-4 at rank 96)."""
    lora_chunk: int = 48
    """`lora`: tokens of a document scored between two adapter steps; must be <= the eval seq_len."""
    lora_batch_docs: int = 16
    """`lora`: documents adapted side by side (sorted by length, longest first; records: 64)."""

    def validate(self) -> None:
        _require(self.chunk_tokens >= 1, f"ttt.chunk_tokens={self.chunk_tokens} must be >= 1")
        for name in ("lr", "lora_lr", "grad_clip"):
            _require(getattr(self, name) >= 0, f"ttt.{name}={getattr(self, name)} must be >= 0")
        _require(0 <= self.momentum < 1, f"ttt.momentum={self.momentum} must be in [0, 1)")
        _require(self.epochs >= 0, f"ttt.epochs={self.epochs} must be >= 0")
        _require(self.batch_seqs >= 1, f"ttt.batch_seqs={self.batch_seqs} must be >= 1")
        _require(self.lora_rank >= 1, f"ttt.lora_rank={self.lora_rank} must be >= 1")
        _require(self.lora_alpha > 0, f"ttt.lora_alpha={self.lora_alpha} must be > 0")
        _require(self.lora_chunk >= 1, f"ttt.lora_chunk={self.lora_chunk} must be >= 1")
        _require(self.lora_batch_docs >= 1, f"ttt.lora_batch_docs={self.lora_batch_docs} must be >= 1")


@dataclass(kw_only=True)
class BudgetConfig:
    """The competition budget a run is held to."""

    artifact_max_bytes: int = 16_000_000
    """Cap on code bytes + compressed model bytes (decimal)."""
    train_seconds: float = 600.0
    """Training wall-clock budget (copied into train.max_wallclock_seconds by presets)."""
    eval_seconds: float = 600.0
    """Evaluation wall-clock budget; exceeding it is reported as a compliance failure."""

    def validate(self) -> None:
        _require(self.artifact_max_bytes > 0, f"budget.artifact_max_bytes={self.artifact_max_bytes} must be > 0")
        _require(self.train_seconds > 0, f"budget.train_seconds={self.train_seconds} must be > 0")
        _require(self.eval_seconds > 0, f"budget.eval_seconds={self.eval_seconds} must be > 0")


@dataclass(kw_only=True)
class RunConfig:
    """A whole run: prepare -> train -> quantize/pack -> reload -> evaluate."""

    name: str = "run"
    """Run name; outputs go to out_dir/name."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def validate(self) -> "RunConfig":
        _require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                 f"name={self.name!r} must be a plain folder name (no '/')")
        _require(bool(self.out_dir), "out_dir must not be empty")
        for key in SECTIONS:
            _check_finite(getattr(self, key), key)
            getattr(self, key).validate()
        _require(self.data.source != "embedded" or self.model.vocab_size >= 260,
                 f"model.vocab_size={self.model.vocab_size} is too small to prepare the embedded corpus: a tokenizer "
                 f"needs >= 260 pieces (256 byte-fallback pieces + 4 specials)")
        _require(self.eval.stride <= self.eval_seq_len, f"eval.stride={self.eval.stride} must be <= the eval "
                 f"sequence length {self.eval_seq_len} (eval.seq_len, else train.train_seq_len)")
        _require(self.eval.ttt != "lora" or self.ttt.lora_chunk <= self.eval_seq_len,
                 f"ttt.lora_chunk={self.ttt.lora_chunk} must be <= the eval sequence length {self.eval_seq_len}")
        return self

    @property
    def dataset_dir(self) -> str:
        """The folder of this run's shards (see DataConfig.paths)."""
        return self.data.paths(self.model.vocab_size)[0]

    @property
    def tokenizer_path(self) -> str:
        """This run's tokenizer file (see DataConfig.paths)."""
        return self.data.paths(self.model.vocab_size)[1]

    @property
    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.train.train_seq_len

    @property
    def eval_stride(self) -> int:
        return self.eval.stride or self.eval_seq_len


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (nested); a dict is returned as a copy."""
    return dict(cfg) if isinstance(cfg, dict) else dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of a config."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def model_config_from_dict(d: Any) -> ModelConfig:
    """A ModelConfig from its stored dict: every field present and typed, then validated."""
    from pgolf.flags import section_from_dict

    cfg = section_from_dict(ModelConfig, d, "model_config")
    cfg.validate()
    return cfg


def run_config_from_dict(d: Any) -> RunConfig:
    """A RunConfig from its stored dict (see `pgolf.flags.run_config_from_dict`)."""
    from pgolf.flags import run_config_from_dict as typed

    return typed(d)


# The sections of a RunConfig, by field name; flags are `--<section>.<field>`.
SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "data": DataConfig,
                             "prepare": PrepareConfig, "quant": QuantConfig, "eval": EvalConfig,
                             "ttt": TTTConfig, "budget": BudgetConfig}
