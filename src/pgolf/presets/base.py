"""The baseline presets and `derive`, the one way every other preset is written.

- `baseline-8xh100`: the challenge's naive baseline (openai/parameter-golf, 2026-03-17_NaiveBaseline:
  9x512 sp1024, 524,288 tokens/step, 600 s on 8xH100, int8 + zlib, 16,000,000 bytes).
- `cpu-baseline`: the same architecture and export on pgolf's CPU track (embedded corpus at vocab
  1024, 2 CPU cores, 600 s of training, at most 1,000,000 bytes of code + model).
- `cpu-demo`: the README's main job; the whole pipeline in under 10 minutes on 2 CPU cores.
- `test-tiny`: seconds-long runs for the test suite.

A record preset is `derive(baseline, model=dict(...), optim=dict(...), ...)`: the fields a record
changes, section by section, on top of a complete baseline, so the difference reads in one screen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pgolf.config import (SECTIONS, BudgetConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig, PrepareConfig,
                          QuantConfig, RunConfig, TrainConfig)

CPU_ARTIFACT_MAX_BYTES = 1_000_000
CPU_TRAIN_SECONDS = 600.0


def derive(base: RunConfig, *, name: str, **sections: dict[str, Any]) -> RunConfig:
    """A new, validated config: `base` with the named fields of each section replaced, e.g.
    `derive(baseline_8xh100(), name="x", model=dict(num_layers=11), train=dict(ema_decay=0.997))`.

    `base` is left untouched. An unknown section or field is a ValueError naming it (a preset bug,
    not a user mistake)."""
    changes: dict[str, Any] = {"name": name}
    for section, fields in sections.items():
        if section not in SECTIONS:
            raise ValueError(f"derive: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        current = getattr(base, section)
        known = {f.name for f in dataclasses.fields(current)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"derive: {section} has no field {', '.join(unknown)}")
        changes[section] = dataclasses.replace(current, **fields)
    # replace() copies the other sections by reference; deep-copy so the new config shares nothing
    return dataclasses.replace(copy_config(base), **changes).validate()


def copy_config(cfg: RunConfig) -> RunConfig:
    """An independent copy of a config (sections are mutable dataclasses)."""
    return dataclasses.replace(cfg, **{key: dataclasses.replace(getattr(cfg, key)) for key in SECTIONS})


def baseline_8xh100() -> RunConfig:
    """The challenge baseline, exactly: every default of config.py is the baseline's value."""
    return RunConfig(
        name="baseline-8xh100",
        data=DataConfig(source="fineweb"),
        train=TrainConfig(compile=True),
        budget=BudgetConfig(artifact_max_bytes=16_000_000, train_seconds=600.0, eval_seconds=600.0),
    ).validate()


def _cpu_prepare() -> PrepareConfig:
    # Shared by every CPU preset so they all reuse one preparation of the embedded corpus.
    return PrepareConfig(val_target_bytes=800_000, tokenizer_train_bytes=12_000_000)


def _cpu_optim() -> OptimConfig:
    # Baseline learning rates; momentum warm-up shortened because CPU runs take hundreds, not
    # thousands, of steps.
    return OptimConfig(muon_momentum_warmup_steps=100)


def cpu_baseline() -> RunConfig:
    """Baseline architecture and int8+zlib export, sized to 1,000,000 bytes and 600 s on 2 cores."""
    return RunConfig(
        name="cpu-baseline",
        model=ModelConfig(num_layers=7, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=2.0),
        optim=_cpu_optim(),
        train=TrainConfig(train_batch_tokens=16_384, train_seq_len=256, grad_accum_steps=2, iterations=100_000,
                          warmdown_iters=120, warmup_steps=3, max_wallclock_seconds=CPU_TRAIN_SECONDS,
                          val_loss_every=0, train_log_every=50, compile=True),
        prepare=_cpu_prepare(),
        # Small matrices of a CPU-sized model would all fall under the baseline's 65,536-element
        # "keep float" threshold; scale it with the model so the matrices are quantised as intended.
        quant=QuantConfig(keep_float_max_numel=4_096),
        # 2,048 tokens per forward (8 windows of 256): on 2 cores a small batch stays in cache (stride-64
        # evaluation of 100k tokens: 54.2 s at 524,288, 33.4 s at 65,536, 21.4 s at 16,384; of the whole
        # validation set: 57.0 s at 16,384, 49.7 s at 4,096, 39.8 s at 2,048; the same val_bpb; docs/LOG.md).
        # Compiled scoring, as the baseline script evaluates its compiled model: per 2,048-token forward 1.6x
        # (standard) and 1.2-1.4x (stride 64) faster than eager, after a compile of 2-30 s (docs/LOG.md)
        eval=EvalConfig(batch_tokens=2_048, compile=True),
        budget=BudgetConfig(artifact_max_bytes=CPU_ARTIFACT_MAX_BYTES, train_seconds=CPU_TRAIN_SECONDS),
    ).validate()


def cpu_demo() -> RunConfig:
    """A small model trained for 3 minutes: every stage of the pipeline, end to end, quickly."""
    return derive(cpu_baseline(), name="cpu-demo", model=dict(num_layers=4),
                  train=dict(warmdown_iters=60, warmup_steps=2, max_wallclock_seconds=180.0, train_log_every=25),
                  budget=dict(train_seconds=180.0))


def tiny() -> RunConfig:
    """A seconds-long run on a slice of the corpus, for tests (writes under runs/ and data/tiny)."""
    return RunConfig(
        name="test-tiny",
        model=ModelConfig(vocab_size=512, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_mult=2.0),
        optim=_cpu_optim(),
        train=TrainConfig(train_batch_tokens=2_048, train_seq_len=64, grad_accum_steps=2, iterations=8,
                          warmdown_iters=4, warmup_steps=1, max_wallclock_seconds=60.0, val_loss_every=4,
                          train_log_every=2),
        data=DataConfig(root="data/tiny"),
        prepare=PrepareConfig(val_target_bytes=60_000, tokenizer_train_bytes=2_000_000,
                              max_docs_per_source=60),
        quant=QuantConfig(keep_float_max_numel=1_024),
        eval=EvalConfig(batch_tokens=8_192, max_tokens=20_000),
        budget=BudgetConfig(artifact_max_bytes=CPU_ARTIFACT_MAX_BYTES, train_seconds=60.0),
    ).validate()
