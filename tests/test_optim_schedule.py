"""Schedules as pure functions of (step, elapsed seconds), checked at chosen times, and the decoupled
weight-decay arithmetic and its groups."""

from __future__ import annotations

import pytest
import torch

from helpers_train import one_thread  # noqa: F401  (autouse: single-threaded torch)
from pgolf.config import ModelConfig, OptimConfig, TrainConfig
from pgolf.model.gpt import GPT
from pgolf.optim.groups import build_optimizers, decay_weights_
from pgolf.optim.muon import Muon, muon_scale, zeropower_newton_schulz
from pgolf.optim.schedule import apply_lr, progress, schedule_at, wd_taper


def at(step: int, elapsed_s: float, budget_s: float = 100.0, **fields: float) -> float:
    optim = OptimConfig(**{k: v for k, v in fields.items() if k in OptimConfig.__dataclass_fields__})
    train = TrainConfig(iterations=1000, **{k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__})
    return schedule_at(step, elapsed_s, optim, train, budget_s).lr_mul


def test_progress_is_the_further_of_steps_and_time() -> None:
    assert progress(100, 10.0, 1000, 100.0) == pytest.approx(0.1)
    assert progress(500, 10.0, 1000, 100.0) == pytest.approx(0.5)
    assert progress(100, 80.0, 1000, 100.0) == pytest.approx(0.8)
    assert progress(100, 80.0, 1000, 0.0) == pytest.approx(0.1)
    assert progress(2000, 500.0, 1000, 100.0) == 1.0


def test_warmdown_fraction_with_floor() -> None:
    kw = dict(warmdown_frac=0.75, warmdown_iters=0)
    assert at(0, 0.0, **kw) == 1.0 and at(10, 24.9, **kw) == 1.0
    assert at(10, 25.0, **kw) == pytest.approx(1.0)
    assert at(10, 62.5, **kw) == pytest.approx(0.5)
    assert at(10, 100.0, **kw) == 0.0
    floored = dict(kw, min_lr_frac=0.1)
    assert at(10, 62.5, **floored) == pytest.approx(0.5)
    assert at(10, 95.0, **floored) == pytest.approx(0.1) and at(10, 100.0, **floored) == pytest.approx(0.1)
    # Iteration-limited run without a budget: progress by steps.
    assert at(625, 0.0, budget_s=0.0, **kw) == pytest.approx(0.5)


def test_warmdown_iters_style_stays_the_default() -> None:
    # 40 steps in 4 s: 0.1 s per step; warmdown_iters=200 spans the last 20 s of a 100 s budget.
    assert at(40, 4.0, warmdown_iters=200) == 1.0
    assert at(800, 90.0, warmdown_iters=200) == pytest.approx(10.0 / (200 * 90.0 / 800))
    assert at(800, 90.0, warmdown_iters=200, min_lr_frac=0.9) == pytest.approx(0.9)


def test_lr_warmup_by_steps_and_by_fraction() -> None:
    assert at(0, 0.0, lr_warmup_steps=4) == pytest.approx(0.25)
    assert at(2, 0.0, lr_warmup_steps=4) == pytest.approx(0.75)
    assert at(3, 0.0, lr_warmup_steps=4) == 1.0 and at(50, 1.0, lr_warmup_steps=4) == 1.0
    assert at(0, 5.0, lr_warmup_frac=0.1, warmdown_iters=0) == pytest.approx(0.5)
    assert at(0, 10.0, lr_warmup_frac=0.1, warmdown_iters=0) == 1.0
    # warm-up and warm-down multiply
    assert at(0, 95.0, lr_warmup_steps=4, warmdown_frac=0.1) == pytest.approx(0.25 * 0.5)


def test_wd_taper() -> None:
    cfg = OptimConfig(wd_taper_start_frac=0.7, wd_taper_final=0.5)
    assert wd_taper(0.0, cfg) == 1.0 and wd_taper(0.7, cfg) == 1.0
    assert wd_taper(0.85, cfg) == pytest.approx(0.75) and wd_taper(1.0, cfg) == pytest.approx(0.5)
    assert wd_taper(0.99, OptimConfig()) == 1.0
    point = schedule_at(0, 85.0, cfg, TrainConfig(iterations=1000), 100.0)
    assert point.wd_mul == pytest.approx(0.75)


def tiny_model(tie: bool = True) -> GPT:
    return GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, tie_embeddings=tie))


def test_weight_decay_groups_and_step_math() -> None:
    cfg = OptimConfig(muon_wd=0.1, embed_wd=0.2, adam_wd=0.3, muon_dtype="float32", wd_taper_start_frac=0.5,
                      wd_taper_final=0.5)
    model = tiny_model(tie=False)
    optimizers = build_optimizers(model, cfg)
    wd = {g["name"]: g["base_wd"] for o in optimizers for g in o.param_groups}
    assert wd == {"tok_emb": 0.2, "matrices": 0.1, "scalars": 0.3, "lm_head": 0.3}
    apply_lr(optimizers, 0.5, 0.9, wd_mul=0.5)
    muon = next(o for o in optimizers if isinstance(o, Muon))
    group = muon.param_groups[0]
    assert group["wd"] == pytest.approx(0.05) and group["lr"] == pytest.approx(0.5 * cfg.matrix_lr)
    p = group["params"][0]
    before = p.detach().clone()
    for q in model.parameters():
        q.grad = torch.ones_like(q)
    decay_weights_(optimizers)
    muon.step()
    g = torch.ones_like(p) * (1 + 0.9)  # Nesterov on a fresh buffer: g + momentum * g
    update = zeropower_newton_schulz(g, dtype=torch.float32) * muon_scale(p.shape)
    expected = before * (1 - group["lr"] * group["wd"]) - group["lr"] * update
    torch.testing.assert_close(p.detach(), expected)


def test_zero_decay_touches_nothing() -> None:
    model = tiny_model()
    optimizers = build_optimizers(model, OptimConfig())
    before = [p.detach().clone() for p in model.parameters()]
    for q in model.parameters():
        q.grad = torch.ones_like(q)
    decay_weights_(optimizers)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("flags,names", [
    (["--optim.muon_batched", "true"], "optim.muon_batched"),
    (["--optim.muon_ns_coeffs", "polar_express", "--optim.muon_backend_steps", "6"], "optim.muon_backend_steps"),
    (["--optim.lr_warmup_steps", "5", "--optim.lr_warmup_frac", "0.1"], "optim.lr_warmup_steps"),
    (["--optim.wd_taper_start_frac", "1.5"], "optim.wd_taper_start_frac"),
    (["--train.ema_decay", "1.0"], "train.ema_decay"),
    (["--train.warmdown_frac", "-0.1"], "train.warmdown_frac"),
    (["--train.calibration_reserve_seconds", "60"], "train.calibration_reserve_seconds"),
    (["--train.data_order", "random"], "train.data_order"),
])
def test_new_fields_are_validated_naming_the_flag(flags: list[str], names: str) -> None:
    from pgolf.config import ConfigError
    from pgolf.flags import apply_overrides
    from pgolf.presets import get_preset

    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        apply_overrides(get_preset("test-tiny"), flags)


def test_every_technique_is_off_by_default() -> None:
    o, t = OptimConfig(), TrainConfig()
    assert (o.muon_ns_coeffs, o.muon_row_normalize, o.muon_sharded, o.muon_batched) == ("classic", False, False, False)
    assert (o.muon_wd, o.embed_wd, o.adam_wd, o.lr_warmup_steps, o.lr_warmup_frac, o.min_lr_frac) == (0, 0, 0, 0, 0, 0)
    assert (t.warmdown_frac, t.ema_decay, t.swa_every, t.sensitivity_frac, t.checkpoint_every_seconds,
            t.calibration_reserve_seconds, t.data_order) == (0, 0, 0, 0, 0, 0, "challenge")
