"""The CPU-track record presets fit 1,000,000 bytes (code + model): a model of each preset with Gaussian
weights (how CPU-track weights compress; random-normal matrices are the hard case) exported with the
preset's own plan lands under the budget, and `pgolf inspect`'s estimate, which says so before training,
stays close to that real export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgolf.bundle import code_bytes
from pgolf.config import RunConfig, config_to_dict
from pgolf.inspect import estimate_bytes, meta_model
from pgolf.model.gpt import GPT
from pgolf.model.roles import param_roles
from pgolf.presets import CPU_ARTIFACT_MAX_BYTES, get_preset
from pgolf.quant.export import ExportResult, write_artifact


def gaussian_export(cfg: RunConfig, path: Path, std: float, code: int) -> ExportResult:
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std)
    return write_artifact(path, model, roles=param_roles(model), quant=cfg.quant,
                          model_config=config_to_dict(cfg.model), run_config=config_to_dict(cfg),
                          code_bytes=code, budget_bytes=cfg.budget.artifact_max_bytes)


@pytest.mark.parametrize("name", ["cpu-record-332", "cpu-record-414", "cpu-record-609", "cpu-record-1992-legal"])
def test_cpu_record_presets_fit_the_byte_budget(name: str, tmp_path: Path) -> None:
    cfg = get_preset(name)
    assert cfg.budget.artifact_max_bytes == CPU_ARTIFACT_MAX_BYTES
    code = code_bytes(cfg)
    res = gaussian_export(cfg, tmp_path / "a.ptz", std=0.05, code=code)
    assert res.info.total_bytes <= CPU_ARTIFACT_MAX_BYTES and res.slack_bytes >= 0
    assert res.fit.pruned == 0  # fits without pruning's help, which a trained model may need
    est = estimate_bytes(meta_model(cfg), cfg, code)
    assert est.fits
    if not cfg.quant.allocate_bits:  # allocation exports other widths than the plan's
        # the estimate is an upper bound of a Gaussian export (stored scales and floats), and a close one
        assert 0.99 <= est.model_bytes / res.info.model_bytes <= 1.04, (est.model_bytes, res.info.model_bytes)
    else:
        low, high = est.allocated_range or (0, 0)
        assert low <= res.info.total_bytes <= high


def test_estimate_matches_a_baseline_scheme_export(tmp_path: Path) -> None:
    # the baseline's int8 with its 1/127 scale floor: unit-variance rows use all 8 bits, as trained weights do
    cfg = get_preset("cpu-baseline")
    code = code_bytes(cfg)
    res = gaussian_export(cfg, tmp_path / "b.ptz", std=1.0, code=code)
    est = estimate_bytes(meta_model(cfg), cfg, code)
    assert 0.99 <= est.model_bytes / res.info.model_bytes <= 1.04, (est.model_bytes, res.info.model_bytes)
