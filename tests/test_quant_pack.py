"""Packing: bit-packing, byte shuffling and every codec round-trip bit-exactly; streams decode to what was
encoded; LQER corrections are quantised factors that lower the error; order-0 entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.artifact import COMPRESSORS, decompress_bounded
from pgolf.config import ConfigError
from pgolf.quant import pack
from pgolf.quant.layout import (QuantizedTensor, TensorPlan, decode_parts, dequantize, stream_nbytes, stream_specs,
                                unpack_bits, unshuffle_bytes)
from pgolf.quant.lqer import add_lqer
from pgolf.quant.intx import quantize_rtn


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_bit_packing_roundtrips(bits: int, n: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << bits, n)
    data = pack.pack_bits(values, bits)
    assert len(data) == (n * bits + 7) // 8
    assert np.array_equal(unpack_bits(data, n, bits), values)


@settings(max_examples=30, deadline=None)
@given(size=st.sampled_from([1, 2, 4, 8]), n=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_byte_shuffle_roundtrips(size: int, n: int, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, n * size, dtype=np.uint8).tobytes()
    shuffled = pack.shuffle_bytes(data, size)
    assert unshuffle_bytes(shuffled, size) == data
    if size == 2 and n >= 2:
        assert shuffled[:n] == data[0::2]  # all low bytes first


@pytest.mark.parametrize("compressor", [*COMPRESSORS])
def test_codecs_roundtrip_and_decompress_within_bounds(compressor: str) -> None:
    data = b"parameter golf " * 1000 + bytes(range(256))
    level = {"zlib": 9, "zstd": 22, "brotli": 11, "lzma": 9, "none": 0}[compressor]
    packed = pack.compress(data, compressor, level)
    assert decompress_bounded(packed, compressor, len(data)) == data
    assert len(decompress_bounded(packed, compressor, 100)) == 101  # stops one byte past the bound
    if compressor != "none":
        assert len(packed) < len(data)


def test_best_tries_every_codec_and_keeps_the_smallest() -> None:
    data = bytes(np.random.default_rng(0).integers(0, 8, 20_000, dtype=np.uint8))
    name, level, out = pack.compress_best(data, pack.codec_choices("best", 0))
    assert len(out) == min(len(pack.compress(data, n, lv)) for n, lv in pack.BEST_LEVELS.items())
    assert pack.compress(data, name, level) == out


def test_bad_codec_settings_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="quant.level"):
        pack.compress(b"x", "zlib", 12)
    with pytest.raises(ConfigError, match="quant.compressor"):
        pack.compress(b"x", "gzip", 9)


def plans_for(shape: tuple[int, int]) -> list[TensorPlan]:
    base = TensorPlan(kind="intx_row", shape=shape, dtype="float32", role="matrix", bits=5, clip="percentile",
                      clip_values=(1.0,), scale_floor=2.0 ** -14)
    return [base,
            TensorPlan(**{**base.to_dict(), "shape": shape, "clip_values": (1.0,), "packing": "bitpack",
                          "transpose": True, "byte_shuffle": True, "group_size": 4}),
            TensorPlan(**{**base.to_dict(), "shape": shape, "clip_values": (1.0,), "bits": 2, "packing": "bitpack"})]


@pytest.mark.parametrize("variant", [0, 1, 2], ids=["int8", "bitpack-transpose-shuffle-groups", "int2"])
def test_streams_decode_to_what_was_encoded(variant: int) -> None:
    w = torch.randn(6, 12, generator=torch.Generator().manual_seed(variant))
    plan = plans_for((6, 12))[variant]
    q = QuantizedTensor(plan=plan, parts=quantize_rtn(w, plan))
    streams = {part: pack.encode_stream(q, part) for part in stream_specs(plan)}
    assert all(len(streams[p]) == stream_nbytes(plan, p) for p in streams)
    decoded = decode_parts(plan, streams)
    assert all(torch.equal(decoded[p], q.parts[p]) for p in q.parts)


def test_float_streams_keep_their_bits() -> None:
    for dtype in ("float32", "float16", "bfloat16"):
        t = torch.randn(3, 5).to(getattr(torch, dtype))
        for shuffle in (False, True):
            plan = TensorPlan(kind="float", shape=(3, 5), dtype=dtype, store_dtype=dtype, byte_shuffle=shuffle)  # type: ignore[arg-type]
            q = QuantizedTensor(plan=plan, parts={"value": t})
            back = decode_parts(plan, {"value": pack.encode_stream(q, "value")})["value"]
            assert torch.equal(back.view(torch.uint8) if back.dtype != torch.uint8 else back, t.view(torch.uint8))


def test_lqer_corrects_the_worst_tensors_with_quantised_factors() -> None:
    g = torch.Generator().manual_seed(4)
    state = {f"m{i}": torch.randn(32, 64, generator=g) * (i + 1) for i in range(4)}
    plans = {n: TensorPlan(kind="intx_row", shape=(32, 64), dtype="float32", role="matrix", bits=3, clip="percentile",
                           clip_values=(1.0,), scale_floor=2.0 ** -14) for n in state}
    parts = {n: quantize_rtn(state[n], plans[n]) for n in state}
    new_plans, new_parts = add_lqer(state, plans, parts, rank=4, top_k=2, a_bits=2, b_bits=4, group_size=16)
    corrected = sorted(n for n, p in new_plans.items() if p.lqer_rank)
    assert corrected == ["m2", "m3"]  # the two largest errors
    for name in corrected:
        p, pt = new_plans[name], new_parts[name]
        assert int(pt["lqer_a"].min()) >= -2 and int(pt["lqer_a"].max()) <= 1
        assert int(pt["lqer_b"].min()) >= -8 and int(pt["lqer_b"].max()) <= 7
        assert pt["lqer_b_scale"].shape == (4, 4) and pt["lqer_a_scale"].shape == (1,)
        before = (dequantize(plans[name], parts[name]) - state[name]).norm()
        after = (dequantize(p, pt) - state[name]).norm()
        assert after < before
        streams = {part: pack.encode_stream(QuantizedTensor(p, pt), part) for part in stream_specs(p)}
        assert torch.equal(dequantize(p, decode_parts(p, streams)), dequantize(p, pt))
    assert all(torch.equal(new_parts["m0"][k], parts["m0"][k]) for k in parts["m0"])


def test_order0_entropy() -> None:
    assert pack.order0_entropy_bits(torch.zeros(100)) == 0.0
    assert math.isclose(pack.order0_entropy_bits(torch.tensor([0, 1] * 50)), 100.0)
    assert math.isclose(pack.order0_entropy_bits(torch.arange(8).repeat(4)), 32 * 3.0)
