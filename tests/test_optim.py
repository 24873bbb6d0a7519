"""Muon, the optimiser split and the schedules: Newton-Schulz lands singular values near 1, the update
scale, every parameter in exactly one group, momentum warm-up, and the baseline's LR warmdown."""

from __future__ import annotations

import json

import pytest
import torch

from pgolf.config import ModelConfig, OptimConfig
from pgolf.model.gpt import GPT
from pgolf.optim.groups import build_optimizers, describe_groups
from pgolf.optim.muon import Muon, zeropower_newton_schulz
from pgolf.optim.schedule import apply_lr, lr_multiplier, muon_momentum_at


def tiny_model(tie: bool = True) -> GPT:
    return GPT(ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2,
                           tie_embeddings=tie))


@pytest.mark.parametrize("shape", [(128, 32), (32, 128), (96, 40), (40, 96)])
def test_newton_schulz_singular_values_near_one(shape: tuple[int, int]) -> None:
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    X = zeropower_newton_schulz(G, steps=5)
    assert X.shape == G.shape and X.dtype == torch.bfloat16
    s = torch.linalg.svdvals(X.float())
    assert s.min() > 0.5 and s.max() < 1.5  # the quintic's band, not exactly 1
    # Same singular vectors as G: X is close to the exact polar factor U V^T.
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = (X.float() * (U @ Vh)).sum() / (X.float().norm() * (U @ Vh).norm())
    assert cos > 0.95


def test_newton_schulz_square_matrix_bulk_near_one() -> None:
    # A random square matrix has a few tiny singular values that five steps cannot lift; the bulk lands in band.
    G = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(zeropower_newton_schulz(G).float())
    assert s.max() < 1.5 and s[: int(0.9 * 64)].min() > 0.5


def test_newton_schulz_ignores_the_gradient_scale() -> None:
    G = torch.randn(48, 24, generator=torch.Generator().manual_seed(1))
    a, b = zeropower_newton_schulz(G).float(), zeropower_newton_schulz(1000 * G).float()
    assert (a - b).norm() < 0.05 * a.norm()  # equal up to bf16 rounding


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_muon_update_is_scaled_orthogonalised_gradient(shape: tuple[int, int]) -> None:
    rows, cols = shape
    p = torch.nn.Parameter(torch.zeros(shape))
    p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    Muon([p], lr=1.0, momentum=0.0, backend_steps=5).step()
    expected = -zeropower_newton_schulz(p.grad).float() * max(1.0, rows / cols) ** 0.5
    assert torch.allclose(p.detach(), expected, atol=1e-2)
    rms = p.detach().pow(2).mean().sqrt().item()
    # With singular values ~1, the update RMS is ~sqrt(min/(rows*cols) * max(1, rows/cols)).
    target = (min(rows, cols) / (rows * cols) * max(1.0, rows / cols)) ** 0.5
    assert 0.5 * target < rms < 1.5 * target


def test_muon_nesterov_momentum_buffer() -> None:
    p = torch.nn.Parameter(torch.zeros(8, 8))
    opt = Muon([p], lr=0.1, momentum=0.9, backend_steps=5)
    g = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        p.grad = g.clone()
        opt.step()
    assert torch.allclose(opt.state[p]["momentum_buffer"], 1.9 * g)


def test_every_parameter_in_exactly_one_group() -> None:
    for tie in (True, False):
        model = tiny_model(tie)
        optimizers = build_optimizers(model, OptimConfig())
        ids = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
        assert all("base_lr" in g for opt in optimizers for g in opt.param_groups)


def test_group_assignment() -> None:
    cfg = OptimConfig()
    model = tiny_model()
    optimizers = build_optimizers(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: (opt, g) for opt in optimizers for g in opt.param_groups}
    assert set(by_group) == {"tok_emb", "matrices", "scalars"}
    muon, mg = by_group["matrices"]
    assert isinstance(muon, Muon) and mg["lr"] == cfg.matrix_lr
    matrix_names = {names[id(p)] for p in mg["params"]}
    assert all(n.startswith("blocks.") and n.endswith(".weight") for n in matrix_names)
    assert len(matrix_names) == 3 * 6  # c_q, c_k, c_v, proj, fc, mlp.proj per block
    _, sg = by_group["scalars"]
    scalar_names = {names[id(p)] for p in sg["params"]}
    assert {"skip_weights", "blocks.0.resid_mix", "blocks.0.attn.q_gain", "blocks.2.attn_scale"} <= scalar_names
    assert sg["lr"] == cfg.scalar_lr
    emb_opt, eg = by_group["tok_emb"]
    assert isinstance(emb_opt, torch.optim.Adam) and eg["lr"] == cfg.tied_embed_lr
    assert emb_opt.defaults["betas"] == (cfg.beta1, cfg.beta2) and emb_opt.defaults["eps"] == cfg.adam_eps


def test_untied_head_and_embedding_lrs() -> None:
    cfg = OptimConfig()
    groups = {g["name"]: g for opt in build_optimizers(tiny_model(tie=False), cfg) for g in opt.param_groups}
    assert groups["tok_emb"]["lr"] == cfg.embed_lr and groups["lm_head"]["lr"] == cfg.head_lr


def test_describe_groups_is_json() -> None:
    rows = describe_groups(build_optimizers(tiny_model(), OptimConfig()))
    json.dumps(rows)
    assert [r["optimizer"] for r in rows] == ["Adam", "Muon", "Adam"]
    assert sum(r["num_params"] for r in rows) == sum(p.numel() for p in tiny_model().parameters())


def test_muon_momentum_warmup() -> None:
    cfg = OptimConfig()
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85)
    assert muon_momentum_at(250, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(500, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(10_000, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(0, OptimConfig(muon_momentum_warmup_steps=0)) == pytest.approx(0.95)


def test_lr_multiplier_without_warmdown_is_one() -> None:
    for step in (0, 10, 1000):
        assert lr_multiplier(step=step, elapsed_ms=step * 50.0, max_wallclock_ms=1000.0, warmdown_iters=0,
                             iterations=100) == 1.0


def test_lr_multiplier_wallclock_reaches_zero_at_the_cap() -> None:
    cap, step_ms, warmdown = 600_000.0, 50.0, 1200  # warmdown spans 60 s before the cap

    def mul(step: int) -> float:
        return lr_multiplier(step=step, elapsed_ms=step * step_ms, max_wallclock_ms=cap, warmdown_iters=warmdown,
                             iterations=20_000)

    assert mul(0) == 1.0 and mul(10_000) == 1.0
    assert mul(10_800) == pytest.approx(1.0)  # 60 s left: warmdown begins
    assert mul(11_400) == pytest.approx(0.5)
    assert mul(11_880) == pytest.approx(0.1)
    assert mul(12_000) == 0.0
    assert mul(12_500) == 0.0  # past the cap: clamped


def test_lr_multiplier_iteration_based() -> None:
    def mul(step: int) -> float:
        return lr_multiplier(step=step, elapsed_ms=0.0, max_wallclock_ms=0.0, warmdown_iters=100, iterations=1000)

    assert mul(0) == 1.0 and mul(899) == 1.0
    assert mul(900) == pytest.approx(1.0) and mul(950) == pytest.approx(0.5) and mul(1000) == 0.0
    assert lr_multiplier(step=5, elapsed_ms=0.0, max_wallclock_ms=0.0, warmdown_iters=100,
                         iterations=10) == pytest.approx(0.05)  # warmdown longer than the run


def test_apply_lr_sets_lr_and_muon_momentum() -> None:
    cfg = OptimConfig()
    optimizers = build_optimizers(tiny_model(), cfg)
    apply_lr(optimizers, 0.25, 0.9)
    for opt in optimizers:
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(0.25 * g["base_lr"])
            if isinstance(opt, Muon):
                assert g["momentum"] == 0.9
            else:
                assert "momentum" not in g
