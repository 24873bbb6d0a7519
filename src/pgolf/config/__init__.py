"""Typed run configuration: one kw-only dataclass per stage, validated where built.

Every field has a default equal to the challenge baseline (openai/parameter-golf `train_gpt.py`,
`Hyperparameters`) unless its comment says otherwise; presets in `pgolf.presets` override fields.
The model and quant sections live in `model.py` and `quant.py` of this package, the checks in `checks.py`.
The CLI exposes each field as `--section.field`. The resolved config is written into every log
header and every artifact, and hashed (`config_hash`) so two runs can be compared at a glance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pgolf.config.checks import ConfigError, check_finite, require
from pgolf.config.model import ModelConfig
from pgolf.config.quant import QuantConfig

__all__ = ["BudgetConfig", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig", "PrepareConfig",
           "QuantConfig", "RUN_IDENTITY_FIELDS", "RunConfig", "SECTIONS", "TTTConfig", "TrainConfig", "config_hash",
           "config_to_dict", "model_config_from_dict", "run_config_from_dict"]



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
    muon_ns_coeffs: Literal["classic", "polar_express"] = "classic"
    """Newton-Schulz coefficients: the classic quintic (3.4445, -4.7750, 2.0315) every step, or Polar
    Express's per-iteration set (at most 5 steps)."""
    muon_row_normalize: bool = False
    """MuonEq-R: divide each row of the Nesterov momentum by its L2 norm before Newton-Schulz."""
    muon_sharded: bool = False
    """Sharded Muon: ranks orthogonalise contiguous shares of same-shape matrices and all-gather the
    results asynchronously (overlapping the next shape's work); off = the baseline's round robin."""
    muon_batched: bool = False
    """Run Newton-Schulz over each rank's same-shape matrices as one batched (bmm) iteration; needs
    optim.muon_sharded."""
    muon_wd: float = 0.0
    """Decoupled weight decay of Muon matrices: p *= 1 - lr * wd before each update."""
    embed_wd: float = 0.0
    """Decoupled weight decay of the token embedding and side tables (Adam)."""
    adam_wd: float = 0.0
    """Decoupled weight decay of the other Adam groups (control tensors, gates, untied head)."""
    wd_taper_start_frac: float = 1.0
    """Training progress after which weight decay tapers linearly to wd_taper_final x; 1 = no taper."""
    wd_taper_final: float = 1.0
    """Weight-decay multiplier reached at the end of training by the taper."""
    lr_warmup_steps: int = 0
    """LR warm-up: the multiplier rises linearly over the first N steps ((step+1)/N); 0 = none."""
    lr_warmup_frac: float = 0.0
    """LR warm-up over this fraction of training progress (min(1, progress/frac)); 0 = none."""
    min_lr_frac: float = 0.0
    """Floor of the warm-down: the LR multiplier never falls below this (records: 0.1)."""

    def validate(self) -> None:
        for name in ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr"):
            require(getattr(self, name) >= 0, f"optim.{name}={getattr(self, name)} must be >= 0")
        require(0 <= self.muon_momentum < 1, f"optim.muon_momentum={self.muon_momentum} must be in [0, 1)")
        require(self.muon_backend_steps >= 1, f"optim.muon_backend_steps={self.muon_backend_steps} must be >= 1")
        require(self.muon_ns_coeffs != "polar_express" or self.muon_backend_steps <= 5,
                 f"optim.muon_backend_steps={self.muon_backend_steps} must be <= 5 with optim.muon_ns_coeffs="
                 "polar_express (it has 5 per-iteration coefficient sets)")
        require(self.muon_sharded or not self.muon_batched,
                 "optim.muon_batched needs optim.muon_sharded true (batching works on each rank's share)")
        require(self.grad_clip_norm >= 0, f"optim.grad_clip_norm={self.grad_clip_norm} must be >= 0")
        for name in ("muon_wd", "embed_wd", "adam_wd", "wd_taper_final"):
            require(getattr(self, name) >= 0, f"optim.{name}={getattr(self, name)} must be >= 0")
        require(0 <= self.wd_taper_start_frac <= 1,
                 f"optim.wd_taper_start_frac={self.wd_taper_start_frac} must be in [0, 1]")
        require(self.lr_warmup_steps >= 0, f"optim.lr_warmup_steps={self.lr_warmup_steps} must be >= 0")
        require(0 <= self.lr_warmup_frac < 1, f"optim.lr_warmup_frac={self.lr_warmup_frac} must be in [0, 1)")
        require(not (self.lr_warmup_steps and self.lr_warmup_frac),
                 "set one of optim.lr_warmup_steps and optim.lr_warmup_frac, not both")
        require(0 <= self.min_lr_frac <= 1, f"optim.min_lr_frac={self.min_lr_frac} must be in [0, 1]")


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
    warmdown_frac: float = 0.0
    """If > 0, the warm-down instead spans this last fraction of training progress (records: 0.667-0.85)
    and train.warmdown_iters is ignored."""
    warmup_steps: int = 20
    """Compile/priming steps run before the clock starts, then undone (weights, optimiser, loader)."""
    max_wallclock_seconds: float = 600.0
    """Training budget in seconds, excluding evaluation pauses and warm-up; 0 disables."""
    val_loss_every: int = 1000
    """Evaluate on validation every N steps (clock paused); 0 disables periodic evaluation."""
    train_log_every: int = 200
    """Write a log line every N steps."""
    seed: int = 1337
    """Seed of the model init (and of the data order when data_order is `seeded` or `shuffled`)."""
    data_order: Literal["challenge", "seeded", "shuffled"] = "challenge"
    """`challenge`: shards in name order from token 0, as the baseline reads them; `seeded`: a shard
    permutation and start offset drawn from the seed; `shuffled`: whole sequences in a seeded random
    order, a fresh phase and permutation every epoch, ranks taking disjoint sequences."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Compute dtype of forward passes: bfloat16 autocast (the loss stays fp32) or plain float32; `auto` is
    bfloat16 on CUDA and on CPUs with native bf16 instructions, float32 elsewhere (emulated bf16 is slower)."""
    compile: bool = False
    """torch.compile the model (costs a cold start; worth it for long runs on GPU)."""
    ema_decay: float = 0.0
    """EMA of the weights (fp32 shadow, every step): ema = d * ema + (1 - d) * w; exported instead of
    the live weights. 0 = off (records: 0.997, 0.9965)."""
    swa_every: int = 0
    """Tight SWA: add the weights to an average every N steps once the LR multiplier is below
    train.swa_lr_threshold; exported when no EMA is on. 0 = off."""
    swa_lr_threshold: float = 0.2
    """SWA collects only while the LR multiplier is below this."""
    sensitivity_frac: float = 0.0
    """Accumulate each parameter tensor's mean squared gradient over this last fraction of the warm-down
    (saved as sensitivity.json for the quantiser); 0 = off."""
    qat_threshold: float = 0.0
    """Late QAT: once the LR multiplier falls below this, block matrices train through the export's own
    fake quantisation (straight-through); 0 = off (records: 0.15)."""
    checkpoint_every_seconds: float = 0.0
    """Write the training state to RUN_DIR/checkpoint.safetensors every N training seconds, atomically
    (resume with `pgolf train --resume RUN_DIR`); 0 = off."""
    calibration_reserve_seconds: float = 0.0
    """Stop the training loop this many seconds before the budget (the schedules end there too), so
    calibration on training data fits inside the budget."""

    def validate(self) -> None:
        require(self.train_seq_len >= 2, f"train.train_seq_len={self.train_seq_len} must be >= 2")
        require(self.grad_accum_steps >= 1, f"train.grad_accum_steps={self.grad_accum_steps} must be >= 1")
        per_micro = self.train_batch_tokens // self.grad_accum_steps
        require(
            self.train_batch_tokens % self.grad_accum_steps == 0 and per_micro % self.train_seq_len == 0 and per_micro > 0,
            f"train.train_batch_tokens={self.train_batch_tokens} must split into train.grad_accum_steps="
            f"{self.grad_accum_steps} micro-batches of whole train.train_seq_len={self.train_seq_len} sequences",
        )
        require(self.iterations >= 1, f"train.iterations={self.iterations} must be >= 1")
        require(self.warmdown_iters >= 0, f"train.warmdown_iters={self.warmdown_iters} must be >= 0")
        require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be >= 0")
        require(self.max_wallclock_seconds >= 0, f"train.max_wallclock_seconds={self.max_wallclock_seconds} must be >= 0")
        require(0 <= self.seed < 2**63, f"train.seed={self.seed} must be in 0..2^63-1")
        require(self.val_loss_every >= 0, f"train.val_loss_every={self.val_loss_every} must be >= 0")
        require(self.train_log_every >= 1, f"train.train_log_every={self.train_log_every} must be >= 1")
        require(0 <= self.warmdown_frac <= 1, f"train.warmdown_frac={self.warmdown_frac} must be in [0, 1]")
        require(0 <= self.ema_decay < 1, f"train.ema_decay={self.ema_decay} must be in [0, 1)")
        require(self.swa_every >= 0, f"train.swa_every={self.swa_every} must be >= 0")
        require(0 < self.swa_lr_threshold <= 1, f"train.swa_lr_threshold={self.swa_lr_threshold} must be in (0, 1]")
        require(0 <= self.sensitivity_frac <= 1, f"train.sensitivity_frac={self.sensitivity_frac} must be in [0, 1]")
        require(0 <= self.qat_threshold <= 1, f"train.qat_threshold={self.qat_threshold} must be in [0, 1]")
        require(self.checkpoint_every_seconds >= 0,
                 f"train.checkpoint_every_seconds={self.checkpoint_every_seconds} must be >= 0")
        require(self.calibration_reserve_seconds >= 0,
                 f"train.calibration_reserve_seconds={self.calibration_reserve_seconds} must be >= 0")
        require(self.max_wallclock_seconds == 0 or self.calibration_reserve_seconds < self.max_wallclock_seconds,
                 f"train.calibration_reserve_seconds={self.calibration_reserve_seconds} must be below "
                 f"train.max_wallclock_seconds={self.max_wallclock_seconds}")


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
        require(not self.tokenizer_path or self.tokenizer_path.endswith(".model"),
                 f"data.tokenizer_path={self.tokenizer_path!r} must be a SentencePiece .model file")
        require(bool(self.root), "data.root must not be empty")

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
        require(self.val_target_bytes > 0, f"prepare.val_target_bytes={self.val_target_bytes} must be > 0")
        require(self.shard_tokens > 0, f"prepare.shard_tokens={self.shard_tokens} must be > 0")


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
    compile: bool = False
    """torch.compile the scoring forward of evaluations without adaptation (pre-quant, and the final one when
    eval.ttt is none) for their most common batch shape, the rest eager; its first call is reported as the
    `compile` stage (a cold start of 20-40 s on 2 cores, a few seconds with inductor's cache warm)."""
    reference_bytes: int = 1_000_000
    """xz and brotli are run on at most this many bytes of whole validation documents (labelled a sample when
    it is not the whole text) as a yardstick beside val_bpb; 0 = off."""
    ttt: Literal["none", "chunked", "lora"] = "none"
    """Score-first test-time training of the final evaluation: `none` (fixed predictor), `chunked` (SGD on the
    whole model after each scored 32k-token chunk), `lora` (per-document LoRA updated after each scored chunk of
    the document). Settings in the ttt section."""
    ngram_order: int = 0
    """Mix two causal n-gram caches of the already-scored validation tokens (the stream so far and the current
    document so far; orders 0..N, exact counts, absolute discounting) into the final evaluation's scores, with weights
    learned from earlier positions only (pgolf.eval.ngram); 0 = off (a fixed predictor)."""
    mix_unadapted: bool = False
    """With a TTT mode: score every position first with the artifact's model as it is (sliding windows at
    eval.stride), then mix those scores into the adapted model's with weights learned from earlier positions
    only, per bin of the position in its document (pgolf.eval.ngram.mix_unadapted), before any n-gram caches."""

    def validate(self) -> None:
        require(self.seq_len >= 0, f"eval.seq_len={self.seq_len} must be >= 0")
        require(self.stride >= 0, f"eval.stride={self.stride} must be >= 0")
        require(0 < self.batch_tokens <= 1 << 24, f"eval.batch_tokens={self.batch_tokens} must be in 1..{1 << 24}")
        require(self.max_tokens >= 0, f"eval.max_tokens={self.max_tokens} must be >= 0")
        require(self.reference_bytes >= 0, f"eval.reference_bytes={self.reference_bytes} must be >= 0")
        require(0 <= self.ngram_order <= 32, f"eval.ngram_order={self.ngram_order} must be in 0..32 (0 = off)")
        require(not self.mix_unadapted or self.ttt != "none",
                "eval.mix_unadapted needs a TTT mode (eval.ttt chunked or lora): without one there is one model")
        if self.seq_len and self.stride:
            require(self.stride <= self.seq_len, f"eval.stride={self.stride} must be <= eval.seq_len={self.seq_len}")


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
    """`lora`: Adam learning rate of the steps after each scored chunk (records: 1e-4 at rank 96;
    cpu-record-tuned: 0.004, screened on a trained CPU-track model)."""
    lora_steps: int = 1
    """`lora`: Adam steps on each scored chunk, each after the first on a new forward over the chunk's windows
    (on the CPU track 2 steps overfit the chunk: +0.04 to +0.08 bpb, docs/LOG.md)."""
    lora_chunk: int = 48
    """`lora`: tokens of a document scored between two adapter steps; must be <= the eval seq_len."""
    lora_batch_docs: int = 16
    """`lora`: documents adapted side by side (sorted by length, longest first; records: 64)."""
    lora_mix_lr: float = 0.0
    """`lora`: run a second LoRA pass first, with adapters of its own at this Adam learning rate (the same
    documents, chunks and steps), and mix its scores into the first pass's with weights learned from earlier
    positions only, as `eval.mix_unadapted` does (pgolf.eval.ngram.mix_passes); 0 = off (one pass)."""
    lora_mix_rank: int = 0
    """`lora`: adapter rank of the second pass (`ttt.lora_mix_lr`), its alpha scaled to keep lora_alpha /
    lora_rank; 0 = lora_rank."""

    def validate(self) -> None:
        require(self.chunk_tokens >= 1, f"ttt.chunk_tokens={self.chunk_tokens} must be >= 1")
        for name in ("lr", "lora_lr", "lora_mix_lr", "grad_clip"):
            require(getattr(self, name) >= 0, f"ttt.{name}={getattr(self, name)} must be >= 0")
        require(0 <= self.momentum < 1, f"ttt.momentum={self.momentum} must be in [0, 1)")
        require(self.epochs >= 0, f"ttt.epochs={self.epochs} must be >= 0")
        require(self.batch_seqs >= 1, f"ttt.batch_seqs={self.batch_seqs} must be >= 1")
        require(self.lora_rank >= 1, f"ttt.lora_rank={self.lora_rank} must be >= 1")
        require(self.lora_alpha > 0, f"ttt.lora_alpha={self.lora_alpha} must be > 0")
        require(self.lora_steps >= 1, f"ttt.lora_steps={self.lora_steps} must be >= 1")
        require(self.lora_chunk >= 1, f"ttt.lora_chunk={self.lora_chunk} must be >= 1")
        require(self.lora_batch_docs >= 1, f"ttt.lora_batch_docs={self.lora_batch_docs} must be >= 1")
        require(self.lora_mix_rank >= 0, f"ttt.lora_mix_rank={self.lora_mix_rank} must be >= 0 (0 = ttt.lora_rank)")


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
        require(self.artifact_max_bytes > 0, f"budget.artifact_max_bytes={self.artifact_max_bytes} must be > 0")
        require(self.train_seconds > 0, f"budget.train_seconds={self.train_seconds} must be > 0")
        require(self.eval_seconds > 0, f"budget.eval_seconds={self.eval_seconds} must be > 0")


@dataclass(kw_only=True)
class RunConfig:
    """A whole run: prepare -> train -> quantize/pack -> reload -> evaluate."""

    name: str = "run"
    """Name of the experiment (the preset's name by default); new run ids start with it."""
    out_dir: str = "runs"
    """Parent folder of run folders."""
    run_id: str = ""
    """This run's folder under out_dir (the challenge's RUN_ID); empty = NAME-DATE-TIME-RANDOM, unique per run."""
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
        require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                 f"name={self.name!r} must be a plain folder name (no '/')")
        require(bool(self.out_dir), "out_dir must not be empty")
        require(self.run_id == "" or ("/" not in self.run_id and self.run_id not in (".", "..")),
                 f"run_id={self.run_id!r} must be a plain folder name (no '/')")
        for key in SECTIONS:
            check_finite(getattr(self, key), key)
            getattr(self, key).validate()
        require(self.data.source != "embedded" or self.model.vocab_size >= 260,
                 f"model.vocab_size={self.model.vocab_size} is too small to prepare the embedded corpus: a tokenizer "
                 f"needs >= 260 pieces (256 byte-fallback pieces + 4 specials)")
        require(self.eval.stride <= self.eval_seq_len, f"eval.stride={self.eval.stride} must be <= the eval "
                 f"sequence length {self.eval_seq_len} (eval.seq_len, else train.train_seq_len)")
        require(not self.ttt.lora_mix_lr or self.eval.ttt == "lora",
                f"ttt.lora_mix_lr={self.ttt.lora_mix_lr} needs eval.ttt lora (a second LoRA pass), not "
                f"{self.eval.ttt!r}: set --eval.ttt lora or --ttt.lora_mix_lr 0")
        require(self.eval.ttt != "lora" or self.ttt.lora_chunk <= self.eval_seq_len,
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


def _json_form(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_form(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_form(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (nested), in the form JSON stores it (tuples as lists), so a
    config read back from a log or an artifact compares equal to a fresh one; a dict is returned as a copy."""
    return _json_form(dict(cfg) if isinstance(cfg, dict) else dataclasses.asdict(cfg))


# Fields that say where a run goes, not what it computes: no hash covers them.
RUN_IDENTITY_FIELDS = ("run_id", "out_dir")


def config_hash(cfg: Any, *, ignore_seed: bool = False) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of a config, without its run identity
    (run_id, out_dir). With `ignore_seed`, the experiment's hash: equal for the seeds of one experiment."""
    data = config_to_dict(cfg)
    for key in RUN_IDENTITY_FIELDS:
        data.pop(key, None)
    if ignore_seed and isinstance(data.get("train"), dict):
        data["train"] = {k: v for k, v in data["train"].items() if k != "seed"}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
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
