"""The baseline int8 export (the reference `pgolf.quant.int8`): hand-computed rows, error bounds, kept floats,
passthrough, quantile fallback. test_quant_plans.py checks the `int8_per_row` export plan against it."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config import QuantConfig
from pgolf.quant import int8, intx
from pgolf.quant.int8 import dequantize_state_dict_int8, quant_stats, quantize_state_dict_int8

PATTERNS = ("blocks.0.attn_scale", "blocks.0.resid_mix", "attn_scale")  # names kept in fp32 (controls)


def quantize_all(percentile: float = 99.99984) -> QuantConfig:
    """A config that quantises every float tensor (nothing is small enough to keep)."""
    return QuantConfig(clip_percentile=percentile, keep_float_max_numel=0)


def test_per_row_matches_hand_computation() -> None:
    # row 0: |w| sorted = [0.5, 1, 2, 3, 100]; the 75th percentile sits exactly on rank 3 -> clip 3.0,
    # so the outlier 100 is clipped to 3 (q = 127). Row 1 is all zeros: the scale floor 1/127 applies.
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5, 100.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0]])
    tensors, meta = quantize_state_dict_int8({"w": w}, quantize_all(75.0), PATTERNS)
    assert meta["tensors"]["w"] == {"kind": "int8_row", "dtype": "float32", "shape": [2, 5]}
    s0 = torch.tensor(3.0, dtype=torch.float32) / 127  # divided by the fp32 scale, stored as fp16
    s1 = torch.tensor(1.0 / 127, dtype=torch.float32)
    expected_q = torch.tensor([[42, -85, 127, 21, 127], [0, 0, 0, 0, 0]], dtype=torch.int8)
    # hand: 1*127/3 = 42.33 -> 42; -2*127/3 = -84.67 -> -85; 0.5*127/3 = 21.17 -> 21
    assert torch.equal(tensors["w.q"], expected_q)
    assert tensors["w.scale"].dtype == torch.float16
    assert torch.equal(tensors["w.scale"], torch.stack([s0, s1]).half())
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    expected = expected_q.float() * torch.stack([s0, s1]).half().float()[:, None]
    assert restored.dtype == torch.float32 and torch.equal(restored, expected)
    assert torch.equal(restored[1], torch.zeros(5))
    assert abs(restored[0, 4].item() - 3.0) < 3.0 / 127  # the outlier comes back at the clip


def test_interpolated_percentile_clip() -> None:
    # rank 0.9 * 4 = 3.6 -> 3 + 0.6 * (100 - 3) = 61.2: torch.quantile's linear interpolation
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5, 100.0]])
    tensors, _ = quantize_state_dict_int8({"w": w}, quantize_all(90.0), PATTERNS)
    scale = torch.quantile(w.abs(), 0.9, dim=1) / 127
    assert abs(torch.quantile(w.abs(), 0.9).item() - 61.2) < 1e-4
    assert torch.equal(tensors["w.scale"], scale.half())
    assert torch.equal(tensors["w.q"], torch.round(torch.clamp(w, -61.2, 61.2) / scale[:, None]).to(torch.int8))


def _row_error_bound(w: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|error| of unclipped entries, allowed bound) for a per-row quantised matrix."""
    tensors, meta = quantize_state_dict_int8({"w": w}, quantize_all(percentile), PATTERNS)
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    clip = torch.quantile(w.abs(), percentile / 100, dim=1)[:, None]
    s32 = (clip / 127).clamp_min(1 / 127)
    s16 = tensors["w.scale"].float()[:, None]
    q = tensors["w.q"].float()
    inside = w.abs() <= clip
    err = (restored - w).abs()
    # rounding is to the fp32 scale (<= s/2); storing the scale in fp16 moves each value by |q| * |s16 - s32|
    bound = 0.5 * s32 + q.abs() * (s16 - s32).abs() + 1e-6 * w.abs()
    return err[inside.expand_as(w)], bound.expand_as(w)[inside.expand_as(w)]


def test_roundtrip_error_bounded_by_half_scale_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 300, generator=g) * torch.logspace(-3, 1, 16)[:, None]
    w[3, 7] = 50.0  # an outlier that the 99th percentile clips
    err, bound = _row_error_bound(w, 99.0)
    assert (err <= bound).all()
    tensors, meta = quantize_state_dict_int8({"w": w}, quantize_all(99.0), PATTERNS)
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    assert restored[3, 7] < 1.0  # clipped to the row's percentile, not reproduced


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), seed=st.integers(0, 2**16),
       percentile=st.sampled_from([50.0, 99.0, 99.99984, 100.0]))
def test_error_bound_property(rows: int, cols: int, seed: int, percentile: float) -> None:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * (seed % 7 + 0.01)
    err, bound = _row_error_bound(w, percentile)
    assert (err <= bound).all()


def test_pure_quantiser_error_is_at_most_half_the_fp32_scale() -> None:
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    q, _ = int8.quantize_rows(w, 1.0)  # no clipping at the 100th percentile
    s32 = (w.abs().amax(dim=1) / 127).clamp_min(1 / 127)[:, None]
    assert ((q.float() * s32 - w).abs() <= s32 / 2 * (1 + 1e-6)).all()


def test_small_floats_kept_fp16_or_fp32_by_name() -> None:
    state = {
        "blocks.0.attn_scale": torch.randn(32),
        "blocks.0.resid_mix": torch.randn(2, 32),
        "blocks.0.norm.weight": torch.randn(32),
        "small_matrix": torch.randn(4, 8, dtype=torch.bfloat16),
    }
    tensors, meta = quantize_state_dict_int8(state, QuantConfig(), PATTERNS)
    kinds = {k: v["kind"] for k, v in meta["tensors"].items()}
    assert set(kinds.values()) == {"float"}
    assert tensors["blocks.0.attn_scale"].dtype == torch.float32
    assert tensors["blocks.0.resid_mix"].dtype == torch.float32
    assert tensors["blocks.0.norm.weight"].dtype == torch.float16
    assert tensors["small_matrix"].dtype == torch.float16
    restored = dequantize_state_dict_int8(tensors, meta)
    assert torch.equal(restored["blocks.0.attn_scale"], state["blocks.0.attn_scale"])
    assert torch.equal(restored["blocks.0.norm.weight"], state["blocks.0.norm.weight"].half().float())
    assert restored["small_matrix"].dtype == torch.bfloat16
    assert restored["blocks.0.resid_mix"].shape == (2, 32)


def test_keep_float_threshold_is_inclusive() -> None:
    cfg = QuantConfig(keep_float_max_numel=64)
    _, meta = quantize_state_dict_int8({"a": torch.randn(8, 8), "b": torch.randn(5, 13)}, cfg, PATTERNS)
    assert meta["tensors"]["a"]["kind"] == "float"
    assert meta["tensors"]["b"]["kind"] == "int8_row"


def test_non_float_tensors_pass_through() -> None:
    state = {"step": torch.tensor(7, dtype=torch.int64), "ids": torch.arange(100_000, dtype=torch.int32),
             "mask": torch.tensor([True, False])}
    tensors, meta = quantize_state_dict_int8(state, quantize_all(), PATTERNS)
    assert {v["kind"] for v in meta["tensors"].values()} == {"passthrough"}
    restored = dequantize_state_dict_int8(tensors, meta)
    for name, t in state.items():
        assert restored[name].dtype == t.dtype and torch.equal(restored[name], t)


def test_other_large_floats_use_one_fp32_scale() -> None:
    w = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(2))
    tensors, meta = quantize_state_dict_int8({"w": w}, quantize_all(100.0), PATTERNS)
    assert meta["tensors"]["w"]["kind"] == "int8_tensor"
    assert tensors["w.scale"].dtype == torch.float32 and tensors["w.scale"].ndim == 0
    assert tensors["w.q"].shape == w.shape
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    assert ((restored - w).abs() <= tensors["w.scale"] / 2 * (1 + 1e-5)).all()
    # the baseline's formula, on the flattened tensor
    clip = float(torch.quantile(w.abs().flatten(), 1.0))
    assert torch.equal(tensors["w.q"], torch.round(w.clamp(-clip, clip) / torch.tensor(clip / 127)).to(torch.int8))


def test_bf16_matrix_roundtrips_to_bf16() -> None:
    w = torch.randn(16, 32).to(torch.bfloat16)
    tensors, meta = quantize_state_dict_int8({"w": w}, quantize_all(), PATTERNS)
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    assert restored.dtype == torch.bfloat16 and restored.shape == w.shape


def test_row_quantile_chunked_and_sorted_paths_match_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    a = torch.randn(7, 301, generator=torch.Generator().manual_seed(3)).abs()
    for q in (0.5, 0.9, 0.999, 0.9999984, 1.0):
        expected = torch.quantile(a, q, dim=1)
        monkeypatch.setattr(intx, "QUANTILE_MAX_NUMEL", 1000)  # chunks of 3 rows
        assert torch.equal(intx.row_quantile(a, q), expected)
        monkeypatch.setattr(intx, "QUANTILE_MAX_NUMEL", 100)  # rows longer than the limit: sorted
        assert torch.equal(intx.row_quantile(a, q), expected)
        monkeypatch.undo()


def test_outputs_are_contiguous_copies_and_meta_is_json() -> None:
    w = torch.randn(8, 16).t()  # non-contiguous
    small = torch.randn(4)
    state = {"w": w, "small": small, "n": torch.tensor([1, 2])}
    tensors, meta = quantize_state_dict_int8(state, QuantConfig(keep_float_max_numel=4), PATTERNS)
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in tensors.values())
    before = {k: v.clone() for k, v in tensors.items()}
    small.add_(1.0)
    state["n"].add_(1)
    assert all(torch.equal(before[k], tensors[k]) for k in tensors)  # nothing aliases the state dict
    assert json.loads(json.dumps(meta)) == meta
    assert meta["tensors"]["w"]["shape"] == [16, 8]


def test_name_collision_is_an_error() -> None:
    state = {"w": torch.randn(10, 10), "w.q": torch.zeros(3)}
    with pytest.raises(ValueError, match="collides"):
        quantize_state_dict_int8(state, QuantConfig(keep_float_max_numel=8), PATTERNS)


def test_quant_stats_counts_and_errors() -> None:
    state = {"w": torch.randn(32, 64), "attn_scale": torch.ones(16), "step": torch.tensor(3)}
    tensors, meta = quantize_state_dict_int8(state, QuantConfig(keep_float_max_numel=100), PATTERNS)
    stats = quant_stats(state, tensors, meta)
    assert json.loads(json.dumps(stats)) == stats
    assert stats["num_int8_params"] == 32 * 64
    assert stats["num_float_params"] == 16
    assert stats["num_passthrough_params"] == 1
    row = stats["per_kind"]["int8_row"]
    assert 0 < row["mean_abs_error"] <= row["max_abs_error"] < float(state["w"].abs().max()) / 127
    assert stats["per_kind"]["float"]["max_abs_error"] == 0.0  # fp32-kept control tensor is exact
    assert stats["stored_tensor_bytes"] == 32 * 64 + 32 * 2 + 16 * 4 + 8
