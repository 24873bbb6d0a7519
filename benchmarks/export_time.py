"""How long `pgolf quantize` takes to re-export a saved run, stage by stage, printed as one JSON object.

Re-exports RUN_DIR/final_model.safetensors under the run's config with the given `--quant.*` flags and
`--budget`, as `pgolf quantize` does, and times each stage: loading the weights, GPTQ calibration (the
Hessians from training batches), the budget fit (quantise, search bits, prune, pack: `write_artifact`),
and the per-tensor report. Scoring the artifact is left out: it is the evaluation's time, not the
export's. The target (issue "Speed") is the whole re-export of a CPU-track model with full GPTQ and
budget fitting in <= 30 s; `within_target` says whether this run met it.

    python benchmarks/export_time.py RUN_DIR [--budget BYTES] [--flags "--quant.gptq True ..."] [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from jsonout import emit

from pgolf.bundle import code_bytes
from pgolf.cli import run_dir_config
from pgolf.config import config_to_dict
from pgolf.model.roles import param_roles
from pgolf.quant.export import (SENSITIVITY_FILE, load_run_model, load_sensitivity, stored_run_config,
                                tensor_report, write_artifact)
from pgolf.quant.gptq import calibration_for

TARGET_SECONDS = 30.0


def time_export(run_dir: Path, flags: list[str], budget: int | None) -> dict[str, Any]:
    """Seconds per stage of re-exporting `run_dir` with `flags` (and `budget` bytes when given)."""
    cfg = run_dir_config(run_dir, flags, None if budget is None else str(budget))
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_run_model(run_dir, cfg)
    sensitivity = load_sensitivity(run_dir / SENSITIVITY_FILE)
    roles = param_roles(model)
    stages["load_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    calibration = calibration_for(model, cfg, list(roles)) if cfg.quant.gptq else None
    stages["calibration_s"] = time.perf_counter() - t
    counted_code = code_bytes(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = write_artifact(Path(tmp) / "model.ptz", model, roles=roles, quant=cfg.quant,
                                model_config=config_to_dict(cfg.model), run_config=stored_run_config(cfg),
                                code_bytes=counted_code, budget_bytes=cfg.budget.artifact_max_bytes,
                                hessians=calibration.hessians if calibration else None, sensitivity=sensitivity)
        stages["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tensor_report(model.state_dict(), result.fit.quantized, result.fit.codec, sensitivity)
    stages["report_s"] = time.perf_counter() - t
    total = sum(stages.values())
    summary = result.summary()
    return {"benchmark": "export_time", "run_dir": str(run_dir), "flags": flags, "budget_bytes": cfg.budget.artifact_max_bytes,
            "threads": torch.get_num_threads(), **stages, "total_s": total, "target_s": TARGET_SECONDS,
            "within_target": total <= TARGET_SECONDS, "total_bytes": summary["total_bytes"],
            "model_bytes": summary["model_bytes"], "pruned_values": summary["pruned_values"],
            "bits": dict(sorted(result.fit.bits.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a run folder written by `pgolf run` or `pgolf train`")
    ap.add_argument("--budget", type=int, default=None, help="artifact budget in bytes (default: the run's)")
    ap.add_argument("--flags", default="", help="quant flags as one string, as `pgolf quantize` takes them")
    ap.add_argument("--out", default="", help="also write the JSON here")
    a = ap.parse_args()
    emit(time_export(a.run_dir, shlex.split(a.flags), a.budget), a.out)


if __name__ == "__main__":
    main()
