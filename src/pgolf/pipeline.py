"""Whole runs: train -> export the artifact -> reload it from disk -> evaluate -> summary + compliance.json.

The scored number is always the one measured on the model rebuilt from the artifact file (the
roundtrip), never the in-memory weights; test-time training, when configured, adapts only that
reloaded model, after export. Validation tokens reach only the evaluator; the trainer's periodic
evaluation is a closure over them that returns numbers.
"""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Any

import brotli
import torch

from pgolf import dist
from pgolf.artifact import ArtifactInfo, write_artifact
from pgolf.config import RunConfig, config_to_dict
from pgolf.dist import DistInfo, use_bf16
from pgolf.model.roles import param_roles
from pgolf.prepare import data_fingerprint, val_text_bytes
from pgolf.runlog import RunLogger, run_header, write_json_atomic
from pgolf.eval.compliance import COMPLIANCE_NAME, evaluate_with_report, format_report
from pgolf.scoring import ArtifactScore, ValData, load_val_data, run_eval
from pgolf.train import TrainResult, save_raw_model, train

ARTIFACT_NAME = "final_model.int8.ptz"


def reference_compression_bpb(text: bytes) -> dict[str, float]:
    """Bits per byte that general-purpose compressors reach on the same validation text."""
    return {
        "xz": 8.0 * len(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME)) / max(len(text), 1),
        "brotli": 8.0 * len(brotli.compress(text, quality=11)) / max(len(text), 1),
    }


def start_run(cfg: RunConfig, info: DistInfo, command: str) -> tuple[Path, RunLogger]:
    """The run folder and its logger, with the self-describing header already written."""
    cfg.validate()
    run_dir = Path(cfg.out_dir) / cfg.name
    log = RunLogger(run_dir, is_main=info.is_main)
    log.header(run_header(cfg, world_size=info.world_size, data_fingerprint=data_fingerprint(cfg),
                          command=command))
    return run_dir, log


def control_names(model: torch.nn.Module) -> list[str]:
    """Names of the control tensors, which the baseline export keeps in fp32."""
    return sorted(name for name, role in param_roles(model).items() if role == "control")


def export(cfg: RunConfig, result: TrainResult, run_dir: Path, log: RunLogger) -> ArtifactInfo:
    """Write the raw weights and the artifact (rank 0 only; callers barrier before reading it)."""
    save_raw_model(result.model, run_dir / "final_model.safetensors")
    art = write_artifact(run_dir / ARTIFACT_NAME, result.model.state_dict(), model_config=config_to_dict(cfg.model),
                         run_config=config_to_dict(cfg), quant=cfg.quant, keep_fp32_patterns=control_names(result.model),
                         extra_meta={"steps": result.steps, "train_seconds": round(result.train_seconds, 3)})
    log.line(f"artifact {art.path}: {art.total_bytes:,} bytes = code {art.code_bytes:,} + model {art.model_bytes:,}")
    return art


def train_and_export(cfg: RunConfig, info: DistInfo, *, command: str = "pgolf train") -> None:
    """`pgolf train`: train and export the artifact, no final evaluation."""
    run_dir, log = start_run(cfg, info, command)
    result = train(cfg, info, log)
    if info.is_main:
        export(cfg, result, run_dir, log)


def run(cfg: RunConfig, info: DistInfo, *, command: str = "pgolf run") -> dict[str, Any]:
    """Train, export, roundtrip and evaluate; write `summary.json` in the run folder and return it."""
    run_dir, log = start_run(cfg, info, command)
    seq_len, stride = cfg.eval_seq_len, cfg.eval_stride
    val = load_val_data(cfg.dataset_dir, cfg.tokenizer_path, cfg.model.vocab_size, seq_len,
                        cfg.eval.max_tokens)

    def periodic(model: torch.nn.Module, step: int) -> dict[str, float]:
        r = run_eval(model, val, cfg.eval, seq_len, seq_len, info, use_bf16(cfg.eval.dtype, info.device))
        return {"val_loss": r.loss, "val_bpb": r.bpb}

    result = train(cfg, info, log, eval_callback=periodic)
    pre = run_eval(result.model, val, cfg.eval, seq_len, stride, info, use_bf16(cfg.eval.dtype, info.device), progress=True)
    log.line(f"pre-quant  val_loss {pre.loss:.6f} | val_bpb {pre.bpb:.6f} | {pre.seconds:.1f} s")

    artifact_path = run_dir / ARTIFACT_NAME
    if info.is_main:
        export(cfg, result, run_dir, log)
    dist.barrier()
    scored, report = final_evaluation(cfg, info, artifact_path, val, result, run_dir)
    post, art, eval_seconds = scored.result, scored.info, report["time"]["eval_seconds"]
    info_bytes = {"model_bytes": art.model_bytes, "code_bytes": art.code_bytes, "total_bytes": art.total_bytes,
                  "artifact_sha256": art.sha256}
    summary = {
        "name": cfg.name,
        "val_bpb": post.bpb,
        "val_loss": post.loss,
        "pre_quant_val_bpb": pre.bpb,
        "pre_quant_val_loss": pre.loss,
        "quant_gap_bpb": post.bpb - pre.bpb,
        "artifact": str(artifact_path),
        **info_bytes,
        "artifact_max_bytes": cfg.budget.artifact_max_bytes,
        "within_byte_budget": info_bytes["total_bytes"] <= cfg.budget.artifact_max_bytes,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "stopped_by": result.stopped_by,
        "tokens_per_second": result.tokens_per_second,
        "tokens_seen": result.tokens_seen,
        "num_parameters": result.num_parameters,
        "peak_memory_bytes": result.peak_memory_bytes,
        "eval_seconds": eval_seconds,
        "within_eval_budget": eval_seconds <= cfg.budget.eval_seconds,
        "eval_seq_len": seq_len,
        "eval_stride": stride,
        "val_tokens_scored": post.num_tokens,
        "val_bytes_scored": post.num_bytes,
        "world_size": info.world_size,
        "seed": cfg.train.seed,
        **compliance_summary(report),
    }
    if info.is_main:
        summary["reference_bpb"] = reference_compression_bpb(val_text_bytes(val.tokens.numpy(), val.sp))
        write_json_atomic(run_dir / "summary.json", summary)
        log.metrics("summary", **summary)
        for line in format_summary(summary):
            log.line(line)
    return summary


def final_evaluation(cfg: RunConfig, info: DistInfo, artifact_path: Path, val: ValData, result: TrainResult,
                     run_dir: Path) -> tuple[ArtifactScore, dict[str, Any]]:
    """The scored evaluation of a run: reload the artifact from disk, evaluate it as eval.ttt says (adaptation only
    ever touches this reloaded model, never the trained one), and write compliance.json in the run folder."""
    return evaluate_with_report(artifact_path, cfg, info, val=val, train_seconds=result.train_seconds,
                                stopped_by=result.stopped_by, report_path=run_dir / COMPLIANCE_NAME)


def compliance_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The summary's compliance fields: verdict, reasons, the readable block, stages and ledger counts."""
    adapted = report["conditions"]["score_before_update"]["checked"]["predictions_adapted_on"]
    return {"compliant": report["compliant"], "compliance_failures": report["failures"],
            "compliance_lines": format_report(report), "eval_ttt": report["evaluation"]["ttt"],
            "eval_stages_seconds": report["time"]["stages_seconds"], "val_predictions_adapted_on": adapted,
            "code_bytes_with_eval_code": report["bytes"]["code_bytes"]}


def format_summary(s: dict[str, Any]) -> list[str]:
    """The final summary block: the scored number first, then what it cost."""
    ref = s["reference_bpb"]
    budget = "OK" if s["within_byte_budget"] else "OVER BUDGET"
    return [
        "=" * 72,
        f"val_bpb {s['val_bpb']:.6f}  (roundtrip from {Path(s['artifact']).name}; "
        f"pre-quant {s['pre_quant_val_bpb']:.6f}, gap {s['quant_gap_bpb']:+.6f})",
        f"val_loss {s['val_loss']:.6f} nats/token | {s['val_tokens_scored']:,} tokens, {s['val_bytes_scored']:,} bytes "
        f"| seq {s['eval_seq_len']} stride {s['eval_stride']}",
        f"bytes {s['total_bytes']:,} = code {s['code_bytes']:,} + model {s['model_bytes']:,} "
        f"(budget {s['artifact_max_bytes']:,}: {budget})",
        f"train {s['train_seconds']:.1f} s, {s['steps']} steps ({s['stopped_by']}), {s['tokens_per_second']:,.0f} tok/s, "
        f"peak memory {s['peak_memory_bytes'] / 2**30:.2f} GiB, {s['num_parameters']:,} params",
        f"eval {s['eval_seconds']:.1f} s | reference on the same text: xz {ref['xz']:.3f} bpb, brotli {ref['brotli']:.3f} bpb",
        *s["compliance_lines"],
        "=" * 72,
    ]
