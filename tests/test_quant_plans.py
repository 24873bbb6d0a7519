"""Export plans and round-to-nearest quantisers: the baseline plan is bit-identical to the baseline's own
export, roles decide treatment, intN error bounds, clip rules that never lose to their candidates,
and `fake_quantize` equal to what the artifact restores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers_quant import export, small_config, trained_like
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.artifact import read_artifact
from pgolf.config import ConfigError, QuantConfig
from pgolf.model.roles import param_roles
from pgolf.quant.int8 import dequantize_state_dict_int8, quantize_state_dict_int8
from pgolf.quant.intx import fake_quantize, quantize_rtn
from pgolf.quant.layout import TensorPlan, dequantize, qmax
from pgolf.quant.plan import plan_export
from pgolf.quant.quantize import quantize


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))


def row_plan(shape: tuple[int, int], bits: int, clip: str = "percentile", values: tuple[float, ...] = (1.0,),
             group_size: int = 0) -> TensorPlan:
    return TensorPlan(kind="intx_row", shape=shape, dtype="float32", role="matrix", bits=bits, clip=clip,  # type: ignore[arg-type]
                      clip_values=values, scale_floor=2.0 ** -14, group_size=group_size)


def rtn_restore(w: torch.Tensor, plan: TensorPlan) -> torch.Tensor:
    return dequantize(plan, quantize_rtn(w, plan))


# ---------------------------------------------------------------- the baseline plan

def generic_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    g = torch.Generator().manual_seed(0)
    state = {
        "emb.weight": torch.randn(96, 32, generator=g) * 0.02,
        "m.weight": torch.randn(48, 40, generator=g) * 3,
        "m16.weight": torch.randn(40, 24, generator=g).to(torch.bfloat16),
        "zero.weight": torch.zeros(8, 16),
        "outlier.weight": torch.cat([torch.randn(1, 700, generator=g), torch.full((1, 1), 50.0)], dim=1),
        "conv.weight": torch.randn(4, 8, 16, generator=g),
        "scale": torch.rand(32, generator=g),
        "mix": torch.rand(2, 32, generator=g),
        "small.weight": torch.randn(4, 8, generator=g),
        "step": torch.tensor(12, dtype=torch.int64),
    }
    roles = {"emb.weight": "embedding", "scale": "control", "mix": "control", "conv.weight": "matrix"}
    return state, {n: roles.get(n, "matrix") for n in state if state[n].is_floating_point()}


@pytest.mark.parametrize("keep", [0, 256, 65_536])
@pytest.mark.parametrize("percentile", [99.99984, 99.0, 100.0])
def test_baseline_plan_is_bit_identical_to_the_baseline_export(keep: int, percentile: float) -> None:
    state, roles = generic_state()
    cfg = QuantConfig(keep_float_max_numel=keep, clip_percentile=percentile)
    controls = [n for n, r in roles.items() if r == "control"]
    reference = dequantize_state_dict_int8(*quantize_state_dict_int8(state, cfg, controls))
    ours = {n: q.restore() for n, q in quantize(state, plan_export(state, roles, cfg)).items()}
    assert reference.keys() == ours.keys()
    for name in reference:
        assert bits_equal(ours[name], reference[name]), name


def test_baseline_plan_of_a_model_through_the_artifact(tmp_path: Path) -> None:
    cfg = small_config(keep_float_max_numel=512)
    model = trained_like(cfg)
    roles = param_roles(model)
    controls = [n for n, r in roles.items() if r == "control"]
    reference = dequantize_state_dict_int8(*quantize_state_dict_int8(model.state_dict(), cfg.quant, controls))
    loaded = read_artifact(export(tmp_path / "a.ptz", model, cfg).info.path)
    assert all(bits_equal(loaded.state[n], reference[n]) for n in reference)
    kinds = {loaded.plans[n].kind for n in reference}
    assert kinds == {"intx_row", "float"}


# ---------------------------------------------------------------- plans by role

def test_intx_plan_follows_roles() -> None:
    cfg = small_config(scheme="intx", keep_float_max_numel=0, matrix_bits=5, embed_bits=7, matrix_clip="sdclip",
                       embed_clip="gptq_lite", sdclip_k_mlp=(11.5,), sdclip_k_attn=(13.0,))
    model = trained_like(cfg)
    roles = param_roles(model)
    plans = plan_export(model, roles, cfg.quant)
    assert plans.keys() == model.state_dict().keys()
    for name, plan in plans.items():
        role = roles[name]
        if role == "control":
            assert plan.kind == "float" and plan.store_dtype == "float32"
        elif role == "embedding":
            assert (plan.kind, plan.bits, plan.clip, plan.clip_values) == ("intx_row", 7, "gptq_lite",
                                                                        cfg.quant.gptq_lite_quantiles)
        else:
            k = 11.5 if ".mlp." in name else 13.0  # the groups come from module types; names only check it
            assert (plan.kind, plan.bits, plan.clip, plan.clip_values) == ("intx_row", 5, "sdclip", (k,))


def test_plan_needs_a_role_for_every_float() -> None:
    state, roles = generic_state()
    del roles["m.weight"]
    with pytest.raises(ValueError, match="m.weight has no role"):
        plan_export(state, roles, QuantConfig())


@pytest.mark.parametrize("field,value", [("matrix_bits", 9), ("embed_bits", 1), ("min_bits", 7), ("group_size", -1),
                                         ("gptq_damp", 2.0), ("lqer_rank", -1), ("margin_bytes", -5),
                                         ("sdclip_k", (0.0,)), ("gptq_lite_quantiles", (1.5,)), ("lqer_a_bits", 1)])
def test_quant_fields_are_validated_naming_the_flag(field: str, value: object) -> None:
    base = QuantConfig(scheme="intx", max_bits=6) if field == "min_bits" else QuantConfig(scheme="intx")
    with pytest.raises(ConfigError, match=f"quant.{field}"):
        dataclasses.replace(base, **{field: value}).validate()


def test_intx_techniques_need_the_intx_scheme() -> None:
    with pytest.raises(ConfigError, match="quant.scheme=intx"):
        QuantConfig(gptq=True).validate()


# ---------------------------------------------------------------- quantisers

@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 8), rows=st.integers(1, 5), cols=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_rtn_error_is_at_most_half_a_step(bits: int, rows: int, cols: int, seed: int) -> None:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * (seed % 5 + 0.1)
    plan = row_plan((rows, cols), bits)  # clip at the row max: nothing is clipped
    parts = quantize_rtn(w, plan)
    assert int(parts["q"].abs().max()) <= qmax(bits) and parts["scale"].dtype == torch.float16
    step = parts["scale"].float()  # (R, 1): the stored scale is the one rounded with
    assert ((rtn_restore(w, plan) - w).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()


def test_fewer_bits_never_reconstruct_better_on_average() -> None:
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errors = [float((rtn_restore(w, row_plan((64, 256), b)) - w).square().mean()) for b in range(2, 9)]
    assert errors == sorted(errors, reverse=True)


def test_gptq_lite_never_loses_to_one_of_its_candidates() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 200, generator=g) * torch.logspace(-2, 0, 32)[:, None]
    w[::5, 3] *= 40  # outliers make clipping worthwhile in some rows
    candidates = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
    best = (rtn_restore(w, row_plan(w.shape, 4, "gptq_lite", candidates)) - w).square().sum(dim=1)
    for q in candidates:
        single = (rtn_restore(w, row_plan(w.shape, 4, "percentile", (q,))) - w).square().sum(dim=1)
        assert (best <= single + 1e-9).all()
    worst = (rtn_restore(w, row_plan(w.shape, 4, "percentile", (1.0,))) - w).square().sum()
    assert float(best.sum()) < float(worst)  # the search found something better than no clipping


def test_sdclip_scale_is_k_sigma_and_a_k_search_never_loses() -> None:
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(2))
    plan = row_plan(w.shape, 6, "sdclip", (3.0,))
    scale = quantize_rtn(w, plan)["scale"]
    assert torch.equal(scale, (3.0 * w.std(dim=1, correction=0) / 31).clamp_min(2.0 ** -14).half()[:, None])
    ks = (2.0, 3.0, 4.0, 6.0)
    best = (rtn_restore(w, row_plan(w.shape, 6, "sdclip", ks)) - w).square().sum(dim=1)
    for k in ks:
        single = (rtn_restore(w, row_plan(w.shape, 6, "sdclip", (k,))) - w).square().sum(dim=1)
        assert (best <= single + 1e-9).all()


def test_group_scales_are_per_group_of_columns() -> None:
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    w[:, 32:] *= 100  # the second half of every row is much larger
    grouped, whole = row_plan(w.shape, 4, group_size=32), row_plan(w.shape, 4)
    parts = quantize_rtn(w, grouped)
    assert parts["scale"].shape == (4, 2) and (parts["scale"][:, 1].float() > 50 * parts["scale"][:, 0].float()).all()
    err = lambda p: float((rtn_restore(w, p)[:, :32] - w[:, :32]).abs().max())  # noqa: E731
    assert err(grouped) < err(whole) / 10


def test_all_zero_rows_get_a_positive_scale() -> None:
    parts = quantize_rtn(torch.zeros(3, 8), row_plan((3, 8), 6))
    assert (parts["scale"] > 0).all() and not parts["q"].any()


# ---------------------------------------------------------------- fake_quantize

def test_fake_quantize_equals_the_exported_roundtrip(tmp_path: Path) -> None:
    cfg = small_config(scheme="intx", keep_float_max_numel=256, matrix_bits=5, matrix_clip="gptq_lite", group_size=16,
                       byte_shuffle=True, packing="bitpack")
    model = trained_like(cfg)
    loaded = read_artifact(export(tmp_path / "a.ptz", model, cfg).info.path)
    for name, p in model.named_parameters():
        assert bits_equal(fake_quantize(p.detach(), loaded.plans[name]), loaded.state[name]), name


def test_fake_quantize_of_the_baseline_plan_and_of_bf16() -> None:
    state, roles = generic_state()
    plans = plan_export(state, roles, QuantConfig(keep_float_max_numel=256))
    restored = {n: q.restore() for n, q in quantize(state, plans).items()}
    for name, t in state.items():
        assert bits_equal(fake_quantize(t, plans[name]), restored[name]), name
    w = torch.randn(8, 16, requires_grad=True)
    out = fake_quantize(w.to(torch.bfloat16), row_plan((8, 16), 4))
    assert out.dtype == torch.bfloat16 and not out.requires_grad
