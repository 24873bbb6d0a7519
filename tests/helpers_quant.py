"""Shared builders for the export and artifact tests: a small GPT with trained-like weights, its configs,
and a one-call export with the project's stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pgolf.config import (BudgetConfig, DataConfig, ModelConfig, QuantConfig, RunConfig, TrainConfig,
                          config_to_dict)
from pgolf.model.gpt import GPT
from pgolf.model.roles import param_roles
from pgolf.quant.export import ExportResult, write_artifact

CODE_BYTES = 12_345


def small_config(**quant: Any) -> RunConfig:
    """A 2x32 model at vocab 64 (fineweb layout, so the embedded corpus's vocabulary floor does not apply)."""
    return RunConfig(
        name="t",
        model=ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0),
        train=TrainConfig(train_batch_tokens=256, train_seq_len=16, grad_accum_steps=1),
        data=DataConfig(source="fineweb"),
        quant=QuantConfig(**quant),
        budget=BudgetConfig(artifact_max_bytes=10_000_000),
    ).validate()


def trained_like(cfg: RunConfig, seed: int = 0) -> GPT:
    """The config's GPT with weights drawn like a trained model's (no zero-initialised projections)."""
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    g = torch.Generator().manual_seed(seed)
    roles = param_roles(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.02 if roles[name] == "embedding" else 0.08 if roles[name] == "matrix" else 0.3
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def export(path: Path, model: GPT, cfg: RunConfig, *, budget: int | None = None, code_bytes: int = CODE_BYTES,
           **kwargs: Any) -> ExportResult:
    """`write_artifact` of a model under its run config (the pipeline's call, minus calibration)."""
    return write_artifact(path, model, roles=param_roles(model), quant=cfg.quant, model_config=config_to_dict(cfg.model),
                          run_config=config_to_dict(cfg), code_bytes=code_bytes,
                          budget_bytes=budget if budget is not None else cfg.budget.artifact_max_bytes, **kwargs)


def with_quant(cfg: RunConfig, **quant: Any) -> RunConfig:
    return dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, **quant)).validate()
