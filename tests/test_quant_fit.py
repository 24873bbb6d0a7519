"""Fitting to the byte budget: selective +-1 pruning lands just under budget - margin, sensitivity-guided
bits fit and follow the sensitivity, code bytes count, and an impossible budget is a one-line error
that carries the per-tensor byte table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_quant import export, small_config, trained_like, with_quant

from pgolf.artifact import read_artifact
from pgolf.errors import UserError
from pgolf.model.roles import param_roles
from pgolf.quant.fit import BudgetError, pruning_candidates
from pgolf.quant.gptq import collect_hessians
from pgolf.quant.layout import expand_scales
from pgolf.quant.plan import plan_export
from pgolf.quant.quantize import quantize

TOLERANCE = 64  # bytes: one more pruned code never moves the compressed size by more than this here

INTX = {"scheme": "intx", "keep_float_max_numel": 0, "matrix_bits": 4, "embed_bits": 8}  # int4: many +-1 codes


@pytest.fixture(scope="module")
def unfitted(tmp_path_factory: pytest.TempPathFactory) -> int:
    cfg = small_config(**INTX)
    return export(tmp_path_factory.mktemp("fit") / "a.ptz", trained_like(cfg), cfg, code_bytes=0).info.model_bytes


@pytest.mark.parametrize("margin", [0, 300])
def test_pruning_lands_just_under_budget_minus_margin(tmp_path: Path, unfitted: int, margin: int) -> None:
    cfg = small_config(**INTX, prune=True, margin_bytes=margin)
    budget = unfitted + 5_000 - 500  # code bytes 5,000; 500 bytes (+ margin) must go
    res = export(tmp_path / "a.ptz", trained_like(cfg), cfg, budget=budget, code_bytes=5_000)
    assert res.info.total_bytes == res.info.model_bytes + 5_000
    assert budget - margin - TOLERANCE <= res.info.total_bytes <= budget - margin
    assert 0 <= res.slack_bytes <= TOLERANCE and res.fit.pruned > 0
    assert read_artifact(res.info.path).info.total_bytes == res.info.total_bytes


def test_pruning_zeroes_only_the_cheapest_ones(tmp_path: Path, unfitted: int) -> None:
    cfg = small_config(**INTX)
    model = trained_like(cfg)
    plain = export(tmp_path / "a.ptz", model, cfg, code_bytes=0)
    pruned = export(tmp_path / "b.ptz", model, with_quant(cfg, prune=True), budget=unfitted - 400, code_bytes=0)
    names, ids, idx = pruning_candidates(plain.fit.quantized, {})
    costs = []
    changed = 0
    for name, q in plain.fit.quantized.items():
        if q.plan.kind != "intx_row":
            continue
        before, after = q.parts["q"], pruned.fit.quantized[name].parts["q"]
        diff = before != after
        assert (before[diff].abs() == 1).all() and (after[diff] == 0).all()  # only +-1 -> 0
        changed += int(diff.sum())
        scale2 = expand_scales(q.parts["scale"], q.plan).square()
        costs.append((scale2[diff], scale2[(before.abs() == 1) & ~diff]))
    assert changed == pruned.fit.pruned > 0
    cut = max(float(c[0].max()) for c in costs if c[0].numel())
    kept = min(float(c[1].min()) for c in costs if c[1].numel())
    assert cut <= kept  # every pruned code was at most as costly as every kept one
    assert len(names) == len({n for n, q in plain.fit.quantized.items() if q.plan.kind == "intx_row"})


def test_pruning_cost_uses_the_hessian_diagonal() -> None:
    cfg = small_config(**INTX)
    model = trained_like(cfg)
    hs = collect_hessians(model, [torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))],
                          torch.device("cpu"))
    quantized = quantize(model.state_dict(), plan_export(model, param_roles(model), cfg.quant))
    name = "blocks.0.mlp.fc.weight"
    hs = {name: hs[name]}
    names, ids, idx = pruning_candidates({name: quantized[name]}, hs)
    q = quantized[name]
    cost = (expand_scales(q.parts["scale"], q.plan).double().square()
            * torch.diagonal(hs[name]).double()[None, :]).reshape(-1)[idx]
    assert (cost[1:] >= cost[:-1]).all() and set(names) == {name}


def test_bits_follow_sensitivity_and_fit(tmp_path: Path, unfitted: int) -> None:
    cfg = small_config(**INTX, allocate_bits=True, min_bits=3, max_bits=8)
    model = trained_like(cfg)
    names = [n for n, r in param_roles(model).items() if r in ("matrix", "embedding")]
    hot, cold = "blocks.0.mlp.fc.weight", "blocks.1.mlp.fc.weight"  # same shape, same statistics
    sensitivity = {n: 1.0 for n in names} | {hot: 1000.0, cold: 0.001}
    budget = export(tmp_path / "int6.ptz", model, with_quant(cfg, allocate_bits=False, matrix_bits=6),
                    code_bytes=0).info.model_bytes  # room for about 6 bits on average
    res = export(tmp_path / "a.ptz", model, cfg, budget=budget, code_bytes=0, sensitivity=sensitivity)
    bits = res.fit.bits
    assert budget * 0.97 <= res.info.total_bytes <= budget  # left-over bytes are spent on more bits
    assert all(3 <= bits[n] <= 8 for n in names)
    assert bits[hot] > bits[cold] and bits[hot] == 8 and bits[cold] == 3
    assert len({bits[n] for n in names}) > 1
    loaded = read_artifact(res.info.path)
    assert {n: p.bits for n, p in loaded.plans.items() if p.bits} == bits


def test_bits_at_max_when_the_budget_allows(tmp_path: Path) -> None:
    cfg = small_config(**INTX, allocate_bits=True, min_bits=4, max_bits=7)
    res = export(tmp_path / "a.ptz", trained_like(cfg), cfg, budget=10_000_000)
    assert set(res.fit.bits.values()) == {7}


def test_impossible_budget_is_one_line_with_the_byte_table(tmp_path: Path) -> None:
    cfg = small_config(**INTX, prune=True, allocate_bits=True, min_bits=5)
    with pytest.raises(BudgetError) as info:
        export(tmp_path / "a.ptz", trained_like(cfg), cfg, budget=20_000, code_bytes=12_000)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert "over the 20,000 byte budget" in message and "largest tensors: " in message
    table = info.value.table
    assert {r["name"] for r in table} == set(trained_like(cfg).state_dict())
    sizes = [r["compressed_bytes"] for r in table]
    assert sizes == sorted(sizes, reverse=True)
    assert not (tmp_path / "a.ptz").exists()


def test_without_fitting_an_over_budget_artifact_is_still_written(tmp_path: Path) -> None:
    # quant off reproduces the baseline pipeline: the run writes it and reports the overrun afterwards
    cfg = small_config(**INTX)
    res = export(tmp_path / "a.ptz", trained_like(cfg), cfg, budget=1_000)
    assert res.info.path.exists() and res.slack_bytes < 0
    with pytest.raises(BudgetError):
        export(tmp_path / "b.ptz", trained_like(cfg), with_quant(cfg, enforce_budget=True), budget=1_000)
