"""Finished run folders without training: header, log, metrics and summary written by the same functions
a real run uses (run_header, RunLogger, format_summary), with chosen scores, so statistics, records
and reports can be tested in milliseconds."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from pgolf.bundle import build_bundle
from pgolf.config import RunConfig
from pgolf.pipeline import format_summary
from pgolf.presets import get_preset
from pgolf.runlog import RunLogger, run_header, write_json_atomic

DATA = {"dataset_dir": "/data/x", "tokenizer_sha256": "0123456789abcdef", "train_shards": 1, "val_shards": 1,
        "train_tokens": 1000, "val_tokens": 500}


def tiny_config(seed: int, **train: Any) -> RunConfig:
    cfg = get_preset("test-tiny")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed, **train))


def code_line(cfg: RunConfig) -> str:
    """The line the runs will start with: the sha256 and size of the config's bundle."""
    code = build_bundle(cfg)
    return f"code_sha256 {hashlib.sha256(code).hexdigest()} bytes {len(code)}"


def fake_run(folder: Path, cfg: RunConfig, *, val_bpb: float, val_loss: float, model_bytes: int = 50_000,
             steps: int = 8, code: str | None = None, data: dict[str, Any] | None = None,
             artifact: bool = False) -> Path:
    """A finished run of `cfg` in `folder` with the given scores; `code` is the code_sha256 line to start
    the log with (none when None); `artifact` writes a real artifact of an untrained model."""
    log = RunLogger(folder, echo=False)
    if code is not None:
        log.line(code)
    log.header(run_header(cfg, world_size=1, data_fingerprint=data or DATA, command="pgolf run", run_id=folder.name))
    batch = cfg.train.train_batch_tokens
    for step in range(1, steps + 1):
        log.metrics("step", step=step, loss=6.0 - 0.1 * step + 0.01 * (cfg.train.seed % 7), lr_mul=1.0 - step / (2 * steps),
                    step_ms=10.0, train_seconds=0.5 * step)
        if step % 4 == 0:
            log.metrics("eval", step=step, train_seconds=0.5 * step, eval_seconds=0.1, val_loss=val_loss + 1 / step,
                        val_bpb=val_bpb + 0.5 / step)
    if artifact:
        model_bytes = write_untrained_artifact(folder, cfg)
    log.line(f"artifact {folder}/final_model.int8.ptz: {model_bytes + 1000:,} bytes = code 1,000 + model {model_bytes:,}")
    summary = {
        "name": cfg.name, "val_bpb": val_bpb, "val_loss": val_loss, "pre_quant_val_bpb": val_bpb - 0.001,
        "pre_quant_val_loss": val_loss - 0.001, "quant_gap_bpb": 0.001, "artifact": f"{folder}/final_model.int8.ptz",
        "model_bytes": model_bytes, "code_bytes": 1000, "total_bytes": model_bytes + 1000, "artifact_sha256": "ab" * 32,
        "artifact_max_bytes": cfg.budget.artifact_max_bytes, "within_byte_budget": True, "steps": steps,
        "train_seconds": 0.5 * steps, "stopped_by": "iterations", "tokens_per_second": batch / 0.5,
        "tokens_seen": steps * batch, "num_parameters": 1, "peak_memory_bytes": 2**20, "eval_seconds": 0.2,
        "within_eval_budget": True, "eval_seq_len": 64, "eval_stride": 64, "val_tokens_scored": 100,
        "val_bytes_scored": 300, "world_size": 1, "seed": cfg.train.seed,
        "reference_bpb": {"xz": 3.0, "brotli": 2.9, "sample_bytes": 300, "whole_text": True}, "compliant": True, "compliance_failures": [],
        "compliance_lines": ["compliance: COMPLIANT"],
    }
    if artifact:
        summary["artifact_sha256"] = hashlib.sha256((folder / "final_model.int8.ptz").read_bytes()).hexdigest()
    write_json_atomic(folder / "summary.json", summary)
    log.metrics("summary", **summary)
    for line in format_summary(summary):
        log.line(line)
    return folder


def write_untrained_artifact(folder: Path, cfg: RunConfig) -> int:
    """A real artifact of a freshly initialised model of `cfg`; returns its size."""
    import torch

    from pgolf.bundle import code_bytes
    from pgolf.model.gpt import GPT
    from pgolf.quant.export import export_model

    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    return export_model(model, cfg, folder / "final_model.int8.ptz", code_bytes=code_bytes(cfg)).info.model_bytes
