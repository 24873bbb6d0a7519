"""The presets' exports fit their byte budgets (moved from test_config_presets with the export stages)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgolf.config import config_to_dict
from pgolf.model.gpt import GPT
from pgolf.model.roles import param_roles
from pgolf.bundle import code_bytes
from pgolf.presets import CPU_ARTIFACT_MAX_BYTES, get_preset
from pgolf.quant.export import write_artifact


@pytest.mark.parametrize("name", ["cpu-demo", "cpu-baseline"])
def test_cpu_presets_fit_the_byte_budget_with_random_weights(name: str, tmp_path: Path) -> None:
    # Random-normal matrices quantise to nearly incompressible int8; trained weights compress better,
    # so fitting with these is a conservative check of the preset's dimensions.
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.05)
    res = write_artifact(tmp_path / "a.ptz", model, roles=param_roles(model), quant=cfg.quant,
                         model_config=config_to_dict(cfg.model), run_config=config_to_dict(cfg),
                         code_bytes=code_bytes(cfg), budget_bytes=cfg.budget.artifact_max_bytes)
    assert res.info.total_bytes <= CPU_ARTIFACT_MAX_BYTES == cfg.budget.artifact_max_bytes
    assert res.slack_bytes >= 0
