"""Full-Hessian GPTQ: lower output error than round to nearest on correlated inputs, dead columns, the
candidate search, Hessians from hooks (tied embedding from the final-normed hidden state), and
calibration that reads only training shards (or none, when the model writes its own text)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_quant import export, small_config, trained_like, with_quant

from pgolf.artifact import read_artifact
from pgolf.data import loader, shards
from pgolf.model.roles import param_roles
from pgolf.quant.gptq import calibration_for
from pgolf.quant import gptq
from pgolf.quant.gptq import (_collect, calibrate, collect_hessians, factor_hessian, gptq_codes, output_error_per_row,
                              quantize_rows_gptq)
from pgolf.quant.intx import quantize_rtn
from pgolf.quant.layout import TensorPlan, dequantize, expand_scales
from pgolf.quant.quantize import GPTQOptions, quantize


def correlated_layer(seed: int, rows: int = 48, cols: int = 96, tokens: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (rows, cols), X (tokens, cols)) where the inputs share a few strong directions, as activations do."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, cols, generator=g) * 3 + torch.randn(cols, cols, generator=g)[:8] * 0.3  # (8, C)
    x = torch.randn(tokens, 8, generator=g) @ mix + 0.3 * torch.randn(tokens, cols, generator=g)  # (N, C)
    x[:, :5] *= 4  # a few high-energy inputs
    return torch.randn(rows, cols, generator=g) * 0.05, x


def plan(shape: tuple[int, int], bits: int, clip: str = "percentile", values: tuple[float, ...] = (1.0,)) -> TensorPlan:
    return TensorPlan(kind="intx_row", shape=shape, dtype="float32", role="matrix", bits=bits, clip=clip,  # type: ignore[arg-type]
                      clip_values=values, scale_floor=2.0 ** -14, gptq=True)


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((x.double() @ (w.double() - w_hat.double()).t()).square().sum())


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(bits: int, act_order: bool) -> None:
    w, x = correlated_layer(bits)
    h = x.t() @ x / x.shape[0]  # (C, C)
    p = plan(tuple(w.shape), bits)
    rtn = quantize_rtn(w, p)
    scale = expand_scales(rtn["scale"], p)  # the same scales for both
    codes = gptq_codes(w, h, scale, bits, block_size=32, act_order=act_order)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= (1 << (bits - 1)) - 1
    gptq_err = output_error(x, w, codes.float() * scale)
    rtn_err = output_error(x, w, dequantize(p, rtn))
    assert gptq_err < 0.8 * rtn_err, (gptq_err, rtn_err)


def test_gptq_block_size_does_not_change_the_result() -> None:
    # lazy batch updates are an implementation detail: one block or many give the same codes
    w, x = correlated_layer(7, rows=16, cols=40)
    h = x.t() @ x / x.shape[0]
    scale = expand_scales(quantize_rtn(w, plan(tuple(w.shape), 4))["scale"], plan(tuple(w.shape), 4))
    a = gptq_codes(w, h, scale, 4, block_size=40)
    b = gptq_codes(w, h, scale, 4, block_size=7)
    assert (a != b).float().mean() < 0.01  # equal up to rounding ties from a different summation order


def test_dead_inputs_get_zero_codes_and_no_nans() -> None:
    w, x = correlated_layer(1, rows=8, cols=32)
    x[:, [3, 17]] = 0.0
    h = x.t() @ x / x.shape[0]
    scale = expand_scales(quantize_rtn(w, plan(tuple(w.shape), 4))["scale"], plan(tuple(w.shape), 4))
    codes = gptq_codes(w, h, scale, 4)
    assert not codes[:, [3, 17]].any()
    assert torch.isfinite(codes.float()).all()


def test_candidate_search_with_gptq_never_loses_to_a_candidate() -> None:
    w, x = correlated_layer(3)
    w[::4, 2] *= 30
    h = x.t() @ x / x.shape[0]
    quantiles = (0.99, 0.999, 1.0)
    options = {"block_size": 32, "act_order": True, "damp": 0.01}
    both = quantize_rows_gptq(w, plan(tuple(w.shape), 4, "gptq_lite", quantiles), h, **options)
    best = output_error_per_row(w, dequantize(plan(tuple(w.shape), 4), both), h)
    for q in quantiles:
        one = quantize_rows_gptq(w, plan(tuple(w.shape), 4, "percentile", (q,)), h, **options)
        assert (best <= output_error_per_row(w, dequantize(plan(tuple(w.shape), 4), one), h) + 1e-12).all()


def reference_gptq(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ as the paper states it, column by column with the whole remainder updated at once (no lazy
    blocks, no act-order): the explicit inverse's Cholesky factor U, q_j = round(w_j / s_j), and the
    error (w_j - q_j s_j) / U_jj spread over the later columns by U_j,j+1:."""
    qm = (1 << (bits - 1)) - 1
    h = h.double().clone()
    h.diagonal().add_(0.01 * float(torch.diag(h).mean()))
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)  # (C, C)
    w, scale = w.double().clone(), scale.double()
    codes = torch.zeros_like(w)
    for j in range(w.shape[1]):
        q = torch.clamp(torch.round(w[:, j] / scale[:, j]), -qm, qm)
        codes[:, j] = q
        err = (w[:, j] - q * scale[:, j]) / u[j, j]
        w[:, j + 1:] -= err[:, None] * u[j, j + 1:][None, :]
    return codes.to(torch.int8)


def test_gptq_matches_the_column_by_column_reference() -> None:
    w, x = correlated_layer(8, rows=32, cols=48)
    h = x.t() @ x / x.shape[0]
    p = plan(tuple(w.shape), 4)
    scale = expand_scales(quantize_rtn(w, p)["scale"], p)
    ours = gptq_codes(w, h, scale, 4, block_size=16, act_order=False)
    assert (ours != reference_gptq(w, h, scale, 4)).float().mean() < 0.01  # equal up to rounding ties


def test_a_precomputed_factor_gives_the_same_codes() -> None:
    w, x = correlated_layer(4, rows=24, cols=64)
    h = x.t() @ x / x.shape[0]
    p = plan(tuple(w.shape), 4)
    scale = expand_scales(quantize_rtn(w, p)["scale"], p)  # (R, C)
    for act_order in (True, False):
        factored = gptq_codes(w, h, scale, 4, block_size=16, factor=factor_hessian(h, act_order=act_order, damp=0.01))
        assert torch.equal(factored, gptq_codes(w, h, scale, 4, block_size=16, act_order=act_order))


def test_candidate_search_keeps_per_row_the_single_candidate_codes() -> None:
    w, x = correlated_layer(5)
    w[::3, 7] *= 25  # rows with an outlier prefer another clip than the rest
    h = x.t() @ x / x.shape[0]
    quantiles = (0.99, 0.999, 1.0)
    options = {"block_size": 32, "act_order": True, "damp": 0.01}
    both = quantize_rows_gptq(w, plan(tuple(w.shape), 4, "gptq_lite", quantiles), h, **options)
    singles = [quantize_rows_gptq(w, plan(tuple(w.shape), 4, "percentile", (q,)), h, **options) for q in quantiles]
    errors = torch.stack([output_error_per_row(w, dequantize(plan(tuple(w.shape), 4), one), h) for one in singles])  # (K, R)
    pick = errors.argmin(dim=0)  # (R,)
    assert len(set(pick.tolist())) > 1  # the rows do not all pick one candidate
    for r in range(w.shape[0]):
        assert torch.equal(both["q"][r], singles[int(pick[r])]["q"][r])
        assert torch.equal(both["scale"][r], singles[int(pick[r])]["scale"][r])


def test_one_export_factorises_each_hessian_once(monkeypatch: pytest.MonkeyPatch) -> None:
    w, x = correlated_layer(6)
    h = x.t() @ x / x.shape[0]
    calls: list[int] = []
    real = gptq.factor_hessian

    def counting(*args: object, **kwargs: object) -> gptq.HessianFactor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gptq, "factor_hessian", counting)
    state, hessians = {"a": w, "b": w * 2}, {"a": h, "b": h}
    factors: dict[str, gptq.HessianFactor] = {}
    first = quantize(state, {n: plan(tuple(w.shape), 6) for n in state}, hessians, GPTQOptions(), factors)
    assert len(calls) == 2 and set(factors) == {"a", "b"}
    # the budget fit re-quantises at other widths: no new factorisation, the same codes as without a cache
    again = quantize(state, {n: plan(tuple(w.shape), 5) for n in state}, hessians, GPTQOptions(), factors)
    assert len(calls) == 2
    fresh = quantize(state, {n: plan(tuple(w.shape), 5) for n in state}, hessians, GPTQOptions())
    assert all(torch.equal(again[n].parts["q"], fresh[n].parts["q"]) for n in state)
    assert not torch.equal(first["a"].parts["q"], again["a"].parts["q"])

# ---------------------------------------------------------------- Hessians

def test_hessians_come_from_the_inputs_of_each_linear_and_the_tied_head() -> None:
    cfg = small_config()
    model = trained_like(cfg)
    ids = torch.randint(0, cfg.model.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    hs = collect_hessians(model, [ids[:2], ids[2:]], torch.device("cpu"))
    linears = {n for n, r in param_roles(model).items() if r == "matrix"}
    assert set(hs) == linears | {"tok_emb.weight"}
    # block 0's query projection reads the normed mix of the normed embedding with itself
    x0 = F.rms_norm(model.tok_emb(ids), (32,))
    mix = model.blocks[0].resid_mix
    q_in = F.rms_norm(mix[0] * x0 + mix[1] * x0, (32,)).reshape(-1, 32)
    torch.testing.assert_close(hs["blocks.0.attn.c_q.weight"], q_in.t() @ q_in / q_in.shape[0], rtol=1e-4, atol=1e-6)
    hidden = model.hidden_states(ids).reshape(-1, 32)
    torch.testing.assert_close(hs["tok_emb.weight"], hidden.t() @ hidden / hidden.shape[0], rtol=1e-4, atol=1e-6)
    assert not model.blocks[0].attn.c_q._forward_pre_hooks  # hooks removed


def test_linears_reading_one_input_share_its_hessian() -> None:
    cfg = small_config()
    model = trained_like(cfg)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    hs = collect_hessians(model, [ids], torch.device("cpu"))
    for i in range(cfg.model.num_layers):
        q = hs[f"blocks.{i}.attn.c_q.weight"]
        assert torch.equal(q, hs[f"blocks.{i}.attn.c_k.weight"]) and torch.equal(q, hs[f"blocks.{i}.attn.c_v.weight"])
        assert not torch.equal(q, hs[f"blocks.{i}.mlp.fc.weight"])  # a different input, its own product


def test_ranks_split_the_batches_and_their_sums_make_the_one_process_hessian() -> None:
    cfg = small_config()
    model = trained_like(cfg)
    batches = [torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(i))
               for i in range(5)]
    whole, tokens, _ = _collect(model, batches, torch.device("cpu"), None, autocast_bf16=False, seconds=None,
                                rank=0, world_size=1)
    assert tokens == 5 * 32
    # no process group here: each "rank" keeps its own share (0, 2, 4 and 1, 3); weighting by tokens merges them
    h0, n0, _ = _collect(model, batches, torch.device("cpu"), None, autocast_bf16=False, seconds=None, rank=0,
                         world_size=2)
    h1, n1, _ = _collect(model, batches, torch.device("cpu"), None, autocast_bf16=False, seconds=None, rank=1,
                         world_size=2)
    assert (n0, n1) == (3 * 32, 2 * 32)
    for name, h in whole.items():
        torch.testing.assert_close((h0[name] * n0 + h1[name] * n1) / (n0 + n1), h, rtol=1e-5, atol=1e-7)


def test_a_time_bound_keeps_at_least_one_batch_and_says_it_cut() -> None:
    cfg = small_config()
    model = trained_like(cfg)
    batches = [torch.randint(0, cfg.model.vocab_size, (1, 16), generator=torch.Generator().manual_seed(i))
               for i in range(4)]
    drawn: list[int] = []

    def lazily() -> Iterator[torch.Tensor]:
        for i, b in enumerate(batches):
            drawn.append(i)
            yield b

    one = calibrate(model, lazily(), torch.device("cpu"), names=list(param_roles(model)), seconds=0.0)
    assert one.cut_short and one.num_tokens == 16 and drawn == [0, 1]  # the second batch is drawn, not used
    first = collect_hessians(model, batches[:1], torch.device("cpu"))
    assert all(torch.equal(one.hessians[n], first[n]) for n in first)
    grad_modes: list[bool] = []
    forward = model.hidden_states
    model.hidden_states = lambda ids: (grad_modes.append(torch.is_grad_enabled()), forward(ids))[1]  # type: ignore[method-assign]
    every = calibrate(model, iter(batches), torch.device("cpu"), names=list(param_roles(model)), seconds=3600.0)
    assert not every.cut_short and every.num_tokens == 4 * 16
    assert grad_modes == [False] * 4  # calibration forwards build no autograd graph


def test_bf16_calibration_forwards_stay_close_to_fp32() -> None:
    cfg = small_config()
    model = trained_like(cfg)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    exact = collect_hessians(model, [ids], torch.device("cpu"))
    half = collect_hessians(model, [ids], torch.device("cpu"), autocast_bf16=True)
    assert set(half) == set(exact)
    for name, h in exact.items():
        assert half[name].dtype == torch.float32
        assert float((half[name] - h).norm() / h.norm()) < 0.05, name


def test_untied_models_have_no_embedding_hessian_but_a_head_one() -> None:
    cfg = small_config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tie_embeddings=False)).validate()
    model = trained_like(cfg)
    hs = collect_hessians(model, [torch.zeros(1, 8, dtype=torch.long)], torch.device("cpu"))
    assert "lm_head.weight" in hs and "tok_emb.weight" not in hs


def test_gptq_export_lowers_the_output_error_of_every_layer(tmp_path: Path) -> None:
    cfg = small_config(scheme="intx", keep_float_max_numel=0, matrix_bits=4, embed_bits=5)
    model = trained_like(cfg)
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    hs = collect_hessians(model, [ids], torch.device("cpu"))
    rtn = read_artifact(export(tmp_path / "rtn.ptz", model, cfg).info.path)
    gptq = read_artifact(export(tmp_path / "gptq.ptz", model, with_quant(cfg, gptq=True), hessians=hs).info.path)
    for name, h in hs.items():
        w = model.state_dict()[name]
        assert gptq.plans[name].gptq and not rtn.plans[name].gptq
        e_gptq = float(output_error_per_row(w, gptq.state[name], h).sum())
        e_rtn = float(output_error_per_row(w, rtn.state[name], h).sum())
        assert e_gptq < e_rtn, name


# ---------------------------------------------------------------- calibration data

def shard_dir(root: Path, vocab: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(2):
        shards.write_shard(root / shards.shard_name("train", i), rng.integers(0, vocab, 3000))
    # garbage validation shards: reading any of them would fail loudly
    (root / shards.shard_name("val", 0)).write_bytes(b"not a shard")
    return root


def spy_on_shard_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = shards.read_shard_header

    def spy(path: object) -> int:
        opened.append(Path(str(path)).name)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(shards, "read_shard_header", spy)
    monkeypatch.setattr(loader, "read_shard_header", spy)
    return opened


def test_calibration_reads_only_training_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(scheme="intx", gptq=True, gptq_batches=10, gptq_seq_len=16)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(shard_dir(tmp_path, 64))))
    opened = spy_on_shard_reads(monkeypatch)
    model = trained_like(cfg)
    cal = calibration_for(model, cfg, list(param_roles(model)))
    assert opened and all("_train_" in name for name in opened), opened
    assert cal.source == "train" and cal.num_tokens == 10 * 16 and cal.seconds > 0
    assert "tok_emb.weight" in cal.hessians and "blocks.1.mlp.proj.weight" in cal.hessians


def test_self_generated_calibration_reads_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(scheme="intx", gptq=True, gptq_calibration="self", gptq_batches=3, gptq_seq_len=6)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(tmp_path / "absent")))
    opened = spy_on_shard_reads(monkeypatch)
    model = trained_like(cfg)
    cal = calibration_for(model, cfg, list(param_roles(model)))
    assert opened == [] and cal.source == "self" and cal.num_tokens == 3 * 6
    again = calibration_for(model, cfg, list(param_roles(model)))
    assert all(torch.equal(cal.hessians[n], again.hessians[n]) for n in cal.hessians)  # seeded sampling


def test_a_broken_hessian_falls_back_to_round_to_nearest() -> None:
    from pgolf.quant.quantize import quantize

    w, x = correlated_layer(5, rows=8, cols=16)
    h = x.t() @ x / x.shape[0]
    h[2, 2] = float("nan")
    p = plan(tuple(w.shape), 4)
    out = quantize({"w": w}, {"w": p}, {"w": h})["w"]
    assert not out.plan.gptq
    assert torch.equal(out.parts["q"], quantize_rtn(w, p)["q"])
