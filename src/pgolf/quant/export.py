"""The export as one call over explicit stages: plan -> (calibrate) -> quantise -> pack -> fit -> write.

`write_artifact` runs the stages on a state dict (or a model, whose structure also gives SDClip its
MLP/attention groups) and writes the file atomically; `export_model` adds what a run needs around it
(roles from the model, GPTQ calibration on training shards or self-generated text, the trainer's
sensitivity statistics); `requantize` re-exports a finished run from its full-precision weights
(`pgolf quantize`). The counted code bytes are always the caller's argument: this package does not
decide what ships.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

import pgolf
from pgolf.artifact import ArtifactInfo
from pgolf.config import RUN_IDENTITY_FIELDS, QuantConfig, RunConfig, config_to_dict
from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic
from pgolf.quant.fit import FitResult, fit_to_budget
from pgolf.quant.layout import QuantizedTensor
from pgolf.quant.pack import compress_best, encode_stream, order0_entropy_bits
from pgolf.quant.plan import plan_export
from pgolf.quant.quantize import GPTQOptions

if TYPE_CHECKING:  # the GPTQ module ships only with quant.gptq
    from pgolf.quant.gptq import Calibration

SENSITIVITY_FILE = "sensitivity.json"
RAW_WEIGHTS_FILE = "final_model.safetensors"


@dataclass
class ExportResult:
    """A written artifact, what it cost, and how the fitting went."""

    info: ArtifactInfo
    fit: FitResult
    budget_bytes: int
    margin_bytes: int
    calibration: Calibration | None = None

    @property
    def slack_bytes(self) -> int:
        """Bytes left under budget - margin (negative when over)."""
        return self.budget_bytes - self.margin_bytes - self.info.total_bytes

    def summary(self) -> dict[str, Any]:
        """JSON-able figures for logs and summaries."""
        out = {"model_bytes": self.info.model_bytes, "code_bytes": self.info.code_bytes,
               "total_bytes": self.info.total_bytes, "budget_bytes": self.budget_bytes,
               "margin_bytes": self.margin_bytes, "slack_bytes": self.slack_bytes,
               "compressor": self.fit.compressor, "pruned_values": self.fit.pruned,
               "bits": dict(sorted(self.fit.bits.items()))}
        if self.calibration is not None:
            out.update(calibration_seconds=self.calibration.seconds, calibration_tokens=self.calibration.num_tokens,
                       calibration_source=self.calibration.source)
        return out


def gptq_options(cfg: QuantConfig) -> GPTQOptions:
    return GPTQOptions(block_size=cfg.gptq_block_size, act_order=cfg.gptq_act_order, damp=cfg.gptq_damp)


def stored_run_config(cfg: RunConfig) -> dict[str, Any]:
    """The run config an artifact carries: what the run computed, without where it ran (run_id, out_dir),
    so the same training gives the same bytes in any folder."""
    data = config_to_dict(cfg)
    for key in RUN_IDENTITY_FIELDS:
        data.pop(key, None)
    return data


def write_artifact(path: str | Path, model_or_state: nn.Module | Mapping[str, Tensor], *, roles: Mapping[str, str],
                   quant: QuantConfig, model_config: dict[str, Any], run_config: dict[str, Any], code_bytes: int,
                   budget_bytes: int, hessians: Mapping[str, Tensor] | None = None,
                   sensitivity: Mapping[str, float] | None = None,
                   extra_meta: dict[str, Any] | None = None) -> ExportResult:
    """Plan, quantise, pack and fit `model_or_state` under `quant`, then write it to `path` atomically.

    `code_bytes` is the counted code the caller ships with the artifact; it is recorded in the file and
    counted against `budget_bytes`."""
    path = Path(path)
    if code_bytes < 0:
        raise ValueError(f"code_bytes={code_bytes} must be >= 0")
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    plans = plan_export(model_or_state, roles, quant, sensitivity)
    meta = {"code_bytes": code_bytes, "pgolf_version": pgolf.__version__, "extra_meta": extra_meta or {}}
    header = {"meta": meta, "model_config": model_config, "run_config": run_config}
    fit = fit_to_budget(state, plans, quant, budget_bytes=budget_bytes, code_bytes=code_bytes, header=header,
                        hessians=hessians, sensitivity=sensitivity, options=gptq_options(quant))
    write_bytes_atomic(path, fit.blob)
    info = ArtifactInfo(path=path, model_bytes=len(fit.blob), code_bytes=code_bytes,
                        total_bytes=len(fit.blob) + code_bytes, sha256=hashlib.sha256(fit.blob).hexdigest())
    return ExportResult(info=info, fit=fit, budget_bytes=budget_bytes, margin_bytes=quant.margin_bytes)


# ---------------------------------------------------------------- inputs of a run's export

def load_sensitivity(path: Path) -> dict[str, float] | None:
    """The trainer's per-tensor sensitivity (name -> finite float >= 0), or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path} is not readable JSON ({type(exc).__name__}); delete it or re-run training") from None
    ok = isinstance(data, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in data.values())
    if not ok:
        raise UserError(f"{path} must map tensor names to finite numbers >= 0; delete it or re-run training")
    return {str(k): float(v) for k, v in data.items()}


def export_model(model: nn.Module, cfg: RunConfig, path: str | Path, *, code_bytes: int,
                 sensitivity: Mapping[str, float] | None = None, calibration: Calibration | None = None,
                 extra_meta: dict[str, Any] | None = None) -> ExportResult:
    """A run's export: roles from the model, GPTQ calibration when asked (unless the trainer already ran it
    and passes `calibration`), then `write_artifact` against `cfg.budget.artifact_max_bytes`."""
    from pgolf.model.roles import param_roles

    roles = param_roles(model)
    if cfg.quant.gptq and calibration is None:
        from pgolf.quant.gptq import calibration_for

        calibration = calibration_for(model, cfg, list(roles))
    result = write_artifact(path, model, roles=roles, quant=cfg.quant, model_config=config_to_dict(cfg.model),
                            run_config=stored_run_config(cfg), code_bytes=code_bytes,
                            budget_bytes=cfg.budget.artifact_max_bytes,
                            hessians=calibration.hessians if calibration else None, sensitivity=sensitivity,
                            extra_meta=extra_meta)
    result.calibration = calibration
    return result


def load_run_model(run_dir: Path, cfg: RunConfig) -> nn.Module:
    """The run's full-precision model from `final_model.safetensors` (safetensors: no code executed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pgolf.model.gpt import GPT

    weights = run_dir / RAW_WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights} not found; `pgolf quantize` needs a run folder written by `pgolf train` or `pgolf run`")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights} cannot be read ({exc}); re-run training") from None
    model = GPT(cfg.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{weights} does not match the model of the run's config ({run_dir / 'header.json'}); "
                        f"pass the run folder the weights came from") from None
    return model


# ---------------------------------------------------------------- report

def tensor_report(state: Mapping[str, Tensor], quantized: Mapping[str, QuantizedTensor], codec: tuple[str, int],
                  sensitivity: Mapping[str, float] | None) -> list[dict[str, Any]]:
    """Per tensor: bits, clip, stored and compressed bytes (its streams compressed alone with `codec`), the
    order-0 entropy of its symbols (codes, or the bytes of a float copy) against the compressed symbol
    stream, relative reconstruction error and sensitivity (JSON-able rows, in state order)."""
    rows = []
    for name, q in quantized.items():
        streams = {part: encode_stream(q, part) for part in q.parts}
        symbol_stream = streams["q" if q.plan.is_int else "value"]
        symbols = q.parts["q"] if q.plan.is_int else torch.tensor(list(symbol_stream), dtype=torch.uint8)
        w = state[name].detach().float().cpu()
        err = float((q.restore().float() - w).double().square().sum() / w.double().square().sum().clamp_min(1e-30))
        rows.append({
            "name": name, "role": q.plan.role, "kind": q.plan.kind, "bits": q.plan.bits, "clip": q.plan.clip,
            "gptq": q.plan.gptq, "lqer_rank": q.plan.lqer_rank, "numel": q.plan.numel,
            "stored_bytes": sum(len(s) for s in streams.values()),
            "compressed_bytes": sum(len(compress_best(s, [codec])[2]) for s in streams.values() if s),
            "symbol_compressed_bytes": len(compress_best(symbol_stream, [codec])[2]) if symbol_stream else 0,
            "entropy_bytes": order0_entropy_bits(symbols) / 8,
            "rel_error": err,
            "sensitivity": None if sensitivity is None else sensitivity.get(name),
        })
    return rows


def format_report(rows: list[dict[str, Any]], result: ExportResult) -> list[str]:
    """The table `pgolf quantize` prints, with the overall entropy line and the budget line."""
    head = (f"{'tensor':34s} {'role':9s} {'kind':11s} {'bits':>4s} {'clip':22s} {'stored':>9s} {'compr':>9s} "
            f"{'symbols':>9s} {'entropy':>9s} {'rel_err':>9s} {'sens':>9s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sens = "" if r["sensitivity"] is None else f"{r['sensitivity']:.3g}"
        clip = r["clip"] + ("+gptq" if r["gptq"] else "") + (f"+lqer{r['lqer_rank']}" if r["lqer_rank"] else "")
        lines.append(f"{r['name'][:34]:34s} {r['role'][:9]:9s} {r['kind']:11s} {r['bits']:4d} {clip[:22]:22s} "
                     f"{r['stored_bytes']:9,d} {r['compressed_bytes']:9,d} {r['symbol_compressed_bytes']:9,d} "
                     f"{r['entropy_bytes']:9,.0f} {r['rel_error']:9.2e} {sens:>9s}")
    symbols = sum(r["symbol_compressed_bytes"] for r in rows)
    entropy = sum(r["entropy_bytes"] for r in rows)
    s = result.summary()
    lines += ["-" * len(head),
              f"symbols compressed alone {symbols:,} bytes vs order-0 entropy {entropy:,.0f} bytes "
              f"({symbols / max(entropy, 1e-9):.3f}x); streams alone {sum(r['compressed_bytes'] for r in rows):,} bytes",
              f"artifact {s['total_bytes']:,} bytes = code {s['code_bytes']:,} + model {s['model_bytes']:,} "
              f"({s['compressor']}) | budget {s['budget_bytes']:,} - margin {s['margin_bytes']:,} | "
              f"slack {s['slack_bytes']:,} | pruned {s['pruned_values']:,}"]
    if "calibration_seconds" in s:
        lines.append(f"calibration {s['calibration_source']} {s['calibration_tokens']:,} tokens in "
                     f"{s['calibration_seconds']:.1f} s")
    return lines


def requantize(run_dir: Path, cfg: RunConfig, out_path: Path, *, code_bytes: int,
               device: torch.device = torch.device("cpu")) -> tuple[ExportResult, list[dict[str, Any]]]:
    """`pgolf quantize`: re-export a run from its saved full-precision weights (and `sensitivity.json`);
    calibration and GPTQ run on `device`."""
    model = load_run_model(run_dir, cfg).to(device)
    sensitivity = load_sensitivity(run_dir / SENSITIVITY_FILE)
    result = export_model(model, cfg, out_path, code_bytes=code_bytes, sensitivity=sensitivity,
                          extra_meta={"requantized_from": RAW_WEIGHTS_FILE})
    rows = tensor_report(model.state_dict(), result.fit.quantized, result.fit.codec, sensitivity)
    return result, rows
