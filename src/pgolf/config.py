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
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration a user wrote that cannot run; the message names the flag and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
        _require(self.vocab_size > 3, f"model.vocab_size={self.vocab_size} must be > 3 (pad/bos/eos/unk are reserved)")
        _require(self.num_layers >= 1, f"model.num_layers={self.num_layers} must be >= 1")
        _require(h >= 1 and d % h == 0, f"model.model_dim={d} is not divisible by model.num_heads={h}")
        _require(kv >= 1 and h % kv == 0, f"model.num_heads={h} is not divisible by model.num_kv_heads={kv}")
        _require((d // h) % 2 == 0, f"head_dim={d // h} (model.model_dim/model.num_heads) must be even for RoPE")
        _require(self.mlp_hidden_dim >= 1, f"model.mlp_mult={self.mlp_mult} gives an empty MLP")
        _require(self.logit_softcap > 0, f"model.logit_softcap={self.logit_softcap} must be > 0")


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
    autocast_bf16: bool = True
    """bf16 autocast for forward passes (CPU and CUDA); the loss is computed in fp32."""
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


@dataclass(kw_only=True)
class DataConfig:
    """Where the prepared shards and the tokenizer live (challenge layout)."""

    source: Literal["embedded", "fineweb"] = "embedded"
    """`embedded`: `pgolf run` prepares the shipped corpus itself; `fineweb`: shards come from `pgolf data fineweb`."""
    dataset_dir: str = "data/datasets/embedded_sp1024"
    """Folder holding fineweb_train_*.bin and fineweb_val_*.bin."""
    tokenizer_path: str = "data/tokenizers/embedded_1024_bpe.model"
    """SentencePiece model file; its vocabulary must equal model.vocab_size."""

    def validate(self) -> None:
        _require(self.tokenizer_path.endswith(".model"), f"data.tokenizer_path={self.tokenizer_path!r} must be a SentencePiece .model file")


@dataclass(kw_only=True)
class PrepareConfig:
    """Embedded corpus -> tokenizer -> shards."""

    vocab_size: int = 1024
    """Vocabulary of the SentencePiece BPE tokenizer to train."""
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
        _require(self.vocab_size >= 260, f"prepare.vocab_size={self.vocab_size} must be >= 260 (256 byte-fallback pieces + 4 specials)")
        _require(self.val_target_bytes > 0, f"prepare.val_target_bytes={self.val_target_bytes} must be > 0")
        _require(self.shard_tokens > 0, f"prepare.shard_tokens={self.shard_tokens} must be > 0")


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

    def validate(self) -> None:
        _require(self.seq_len >= 0, f"eval.seq_len={self.seq_len} must be >= 0")
        _require(self.stride >= 0, f"eval.stride={self.stride} must be >= 0")
        _require(self.batch_tokens > 0, f"eval.batch_tokens={self.batch_tokens} must be > 0")
        if self.seq_len and self.stride:
            _require(self.stride <= self.seq_len, f"eval.stride={self.stride} must be <= eval.seq_len={self.seq_len}")


@dataclass(kw_only=True)
class BudgetConfig:
    """The competition budget a run is held to."""

    artifact_max_bytes: int = 16_000_000
    """Cap on code bytes + compressed model bytes (decimal)."""
    train_seconds: float = 600.0
    """Training wall-clock budget (copied into train.max_wallclock_seconds by presets)."""
    eval_seconds: float = 600.0
    """Evaluation wall-clock budget; exceeding it is reported as a compliance failure."""


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
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def validate(self) -> "RunConfig":
        for section in (self.model, self.optim, self.train, self.data, self.prepare, self.quant, self.eval):
            section.validate()
        _require(
            self.model.vocab_size == self.prepare.vocab_size,
            f"model.vocab_size={self.model.vocab_size} differs from prepare.vocab_size={self.prepare.vocab_size}; set both",
        )
        return self

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


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from its dict (as stored in an artifact); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    _require(not unknown, f"model config has unknown fields {unknown}; the artifact was written by a newer pgolf")
    cfg = ModelConfig(**d)
    cfg.validate()
    return cfg


def run_config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its dict (as stored in an artifact); sections missing from the dict
    keep their defaults, unknown fields are an error."""
    sections = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "data": DataConfig,
                "prepare": PrepareConfig, "quant": QuantConfig, "eval": EvalConfig, "budget": BudgetConfig}
    kwargs = {}
    for key, cls in sections.items():
        if key in d:
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d[key]) - known)
            _require(not unknown, f"run config section {key!r} has unknown fields {unknown}")
            kwargs[key] = cls(**d[key])
    return RunConfig(name=d.get("name", "run"), out_dir=d.get("out_dir", "runs"), **kwargs)
