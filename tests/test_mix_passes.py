"""`eval.mix_unadapted` and `ttt.lora_mix_lr`: the adapted model's scores mixed with the unadapted model's and
with a second LoRA pass's. The mixture at a position depends on nothing that follows it, is never much worse
than its best fixed weights per bucket (document-position bin and pass that won the previous prediction), is
the identity when the passes agree, and the evaluation reports exactly that mixture of the passes, each on
its clock."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_ttt import flat_luts, one_thread, repetitive_stream, tiny_gpt  # noqa: F401  (one_thread: autouse)
from test_ttt_lora import doc_stream

from pgolf.config import ConfigError, EvalConfig, TTTConfig
from pgolf.dist import DistInfo, use_bf16
from pgolf.eval.bpb import TokenLedger
from pgolf.eval.lora import adapt_documents, evaluate_lora, lora_losses
from pgolf.eval.ngram import (DOC_POSITION_BINS, UNADAPTED_GRID, document_positions, mix_passes, mix_scores,
                              pass_buckets)
from pgolf.eval.sliding import eval_mode, evaluate, score_rows, unadapted_losses, window_plan, window_rows
from pgolf.presets import get_preset
from pgolf.scoring import ValData, evaluate_model
from pgolf.tokenizer import BOS_ID

LORA = dict(seq_len=32, chunk=8, batch_docs=2, lora_rank=2, alpha=4.0, lr=0.05)


def losses(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5


def test_document_positions_count_the_tokens_since_the_last_bos_before_each_prediction() -> None:
    x = torch.randint(4, 50, (90,), generator=torch.Generator().manual_seed(0))
    x[[0, 17, 18, 60]] = BOS_ID
    pos = document_positions(x).tolist()
    for t in range(1, 90):
        bos = [i for i in range(t) if x[i] == BOS_ID]
        assert pos[t] == t - bos[-1], t  # a BOS target still counts in the document it ends


def test_nothing_at_a_position_depends_on_what_follows() -> None:
    x = repetitive_stream(300, seed=1)
    a, f = losses(300, 1), losses(300, 2)
    for cut in (0, 40, 200, 298):
        y, a2, f2 = x.clone(), a.clone(), f.clone()
        y[cut + 1:] = (y[cut + 1:] + 5) % 60 + 4
        a2[cut + 1:] += 1.0
        f2[cut + 1:] *= 0.3
        assert torch.equal(mix_passes(a, [f], x)[: cut + 1], mix_passes(a2, [f2], y)[: cut + 1])
        assert torch.equal(mix_passes(a, [f, a * 0.8], x)[: cut + 1], mix_passes(a2, [f2, a2 * 0.8], y)[: cut + 1])


def test_buckets_are_the_position_bin_and_the_pass_that_won_the_previous_prediction() -> None:
    x = doc_stream([300, 90, 40], seed=11)
    a, f, s = losses(x.numel(), 21), losses(x.numel(), 22), losses(x.numel(), 23)
    s[50] = a[50]  # a tie goes to the first pass
    pos = document_positions(x).tolist()
    for others in ([f], [f, s]):
        got = pass_buckets(a, others, x).tolist()
        assert len(got) == x.numel() - 1
        for t in range(1, x.numel()):
            pos_bin = sum(pos[t] > edge for edge in DOC_POSITION_BINS)
            prev = [float(v[t - 1]) for v in (a, *others)]
            won = 0 if t == 1 else prev.index(min(prev))
            assert got[t - 1] == pos_bin * (len(others) + 1) + won, (len(others), t)
    assert len(set(pass_buckets(a, [f, s], x).tolist())) >= 6


def test_mixture_is_within_log_grid_of_its_best_fixed_weight_per_bucket() -> None:
    x = doc_stream([700, 300, 40], seed=2)  # reaches the first four position bins
    a, f = losses(x.numel(), 3), losses(x.numel(), 4)
    mixed = mix_passes(a, [f], x, decay=1.0)  # the bound of the plain posterior (the shipped one forgets)
    assert mixed[0] == 0 and bool(torch.isfinite(mixed).all())
    bins = pass_buckets(a, [f], x)
    assert len(bins.unique()) >= 6
    p_a, p_f = torch.exp(-a[1:].double()), torch.exp(-f[1:].double())
    bound = sum(min(float(-torch.log((1 - w) * p_a[bins == b] + w * p_f[bins == b]).sum()) for w in UNADAPTED_GRID)
                + math.log(len(UNADAPTED_GRID)) for b in bins.unique())
    assert float(mixed[1:].double().sum()) <= bound + 1e-6


def test_two_equal_models_mix_to_the_same_scores() -> None:
    x = repetitive_stream(200, seed=3)
    a = losses(200, 5)
    assert torch.allclose(mix_passes(a, [a], x)[1:], a[1:], atol=1e-6, rtol=0)
    assert torch.allclose(mix_passes(a, [a, a], x)[1:], a[1:], atol=1e-6, rtol=0)


def test_two_other_passes_mix_within_log_grid_of_their_best_fixed_weights_per_bucket() -> None:
    x = doc_stream([700, 300, 40], seed=12)
    a, f, s = losses(x.numel(), 13), losses(x.numel(), 14), losses(x.numel(), 15)
    mixed = mix_passes(a, [f, s], x, decay=1.0)
    bins = pass_buckets(a, [f, s], x)
    p_a, p_f, p_s = (torch.exp(-v[1:].double()) for v in (a, f, s))
    grid = [(u, v) for u in UNADAPTED_GRID for v in UNADAPTED_GRID if u + v <= 1 + 1e-9]
    assert len(grid) == 54  # every pair of the one-pass weights whose sum leaves the adapted model >= 0
    bound = 0.0
    for b in bins.unique():
        m = bins == b
        bound += min(float(-torch.log((1 - u - v) * p_a[m] + u * p_f[m] + v * p_s[m]).sum()) for u, v in grid)
        bound += math.log(len(grid))
    assert float(mixed[1:].double().sum()) <= bound + 1e-6
    # a pass that predicts everything better takes weight: the mixture beats mixing the unadapted pass alone
    better = torch.clamp(a - 1.0, min=0.01)
    assert float(mix_passes(a, [f, better], x).sum()) < float(mix_passes(a, [f], x).sum()) - 0.3 * x.numel()


def test_lora_evaluation_reports_the_mixture_of_both_passes() -> None:
    tokens = doc_stream([120, 90, 100], seed=6, repetitive=True)
    fixed, fixed_result = unadapted_losses(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=256)
    assert fixed.shape == tokens.shape and fixed[0] == 0 and bool((fixed[1:] > 0).all())
    # the pass's own result is the sliding evaluation of the same model, and the sum of its losses
    sliding = evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=256)
    assert (fixed_result.bpb, fixed_result.loss, fixed_result.num_bytes) == (sliding.bpb, sliding.loss, sliding.num_bytes)
    assert float(fixed[1:].double().sum()) == pytest.approx(sliding.loss * (tokens.numel() - 1), rel=1e-6)
    plain = evaluate_lora(tiny_gpt(), tokens, flat_luts(), **LORA)
    alone = evaluate_lora(tiny_gpt(), tokens, flat_luts(), unadapted_nll=fixed, **LORA)
    both = evaluate_lora(tiny_gpt(), tokens, flat_luts(), unadapted_nll=fixed, ngram_order=3, **LORA)
    assert alone.ledger.unadapted and not plain.ledger.unadapted and alone.stages["mix"] >= 0
    assert (alone.num_tokens, alone.num_bytes) == (plain.num_tokens, plain.num_bytes)
    # the adapted model's own losses, recovered from a run that mixes nothing
    ledger = TokenLedger(tokens, flat_luts())
    adapt_documents(tiny_gpt(), ledger, **LORA)
    adapted = ledger.token_losses()
    assert alone.loss * alone.num_tokens == pytest.approx(float(mix_passes(adapted, [fixed], tokens).double().sum()),
                                                          rel=1e-9)
    expected = mix_scores(mix_passes(adapted, [fixed], tokens), tokens, 3, 64)
    assert both.loss * both.num_tokens == pytest.approx(float(expected.double().sum()), rel=1e-9)
    assert alone.bpb != plain.bpb


def test_evaluate_model_runs_the_unadapted_pass_first_and_on_the_clock() -> None:
    tokens = doc_stream([120, 90, 100], seed=7, repetitive=True)
    cfg = get_preset("test-tiny")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, seq_len=32, stride=16, ttt="lora",
                                                            mix_unadapted=True, compile=False),
                              ttt=dataclasses.replace(cfg.ttt, lora_chunk=8, lora_batch_docs=2, lora_rank=2,
                                                      lora_alpha=4.0, lora_lr=0.05))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    val = ValData(tokens=tokens, luts=flat_luts(), sp=None)
    r = evaluate_model(tiny_gpt(), val, cfg, info)
    assert r.ledger.unadapted and 0 < r.stages["unadapted"] < r.seconds
    # the pass is kept as the model's fixed-predictor score (what `pgolf run` reports as the roundtrip)
    sliding = evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=cfg.eval.batch_tokens,
                       autocast_bf16=use_bf16(cfg.eval.dtype, info.device))
    assert r.unadapted is not None and (r.unadapted.bpb, r.unadapted.num_tokens) == (sliding.bpb, sliding.num_tokens)
    assert r.stages["unadapted"] == r.unadapted.seconds
    off = evaluate_model(tiny_gpt(), val, dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval,
                                                                                            mix_unadapted=False)), info)
    assert "unadapted" not in off.stages and not off.ledger.unadapted and off.unadapted is None and off.bpb != r.bpb


@pytest.mark.parametrize("unadapted", [True, False])
def test_evaluate_model_runs_a_second_lora_pass_and_mixes_it_in(unadapted: bool) -> None:
    tokens = doc_stream([120, 90, 100], seed=9, repetitive=True)
    cfg = get_preset("test-tiny")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, seq_len=32, stride=16, ttt="lora",
                                                            mix_unadapted=unadapted, ngram_order=2, compile=False),
                              ttt=dataclasses.replace(cfg.ttt, lora_chunk=8, lora_batch_docs=2, lora_rank=2,
                                                      lora_alpha=4.0, lora_lr=0.05, lora_mix_lr=0.2,
                                                      lora_mix_rank=0 if unadapted else 4))
    cfg.validate()
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    bf16 = use_bf16(cfg.eval.dtype, info.device)
    r = evaluate_model(tiny_gpt(), ValData(tokens=tokens, luts=flat_luts(), sp=None), cfg, info)
    assert r.ledger.lora_mixed and r.ledger.unadapted == unadapted
    assert r.lora_mix is not None and r.stages["lora_mix"] == r.lora_mix.seconds > 0
    assert r.seconds >= r.stages["lora_mix"] + r.stages.get("unadapted", 0.0)
    # the second pass is its own score-first LoRA evaluation at ttt.lora_mix_lr, mixing nothing
    # (ttt.lora_mix_rank 4: rank 4 at alpha 8, the first pass's alpha / rank)
    lora = dict(LORA, lr=0.2) if unadapted else dict(LORA, lr=0.2, lora_rank=4, alpha=8.0)
    second = evaluate_lora(tiny_gpt(), tokens, flat_luts(), **lora, seed=cfg.train.seed, autocast_bf16=bf16)
    assert (r.lora_mix.bpb, r.lora_mix.num_tokens) == (second.bpb, second.num_tokens)
    assert r.lora_mix.ledger.num_adapted == second.ledger.num_adapted > 0
    # the reported loss is the mixture of the passes' losses, then the caches
    second_nll, _ = lora_losses(tiny_gpt(), tokens, flat_luts(), **lora, seed=cfg.train.seed, autocast_bf16=bf16)
    ledger = TokenLedger(tokens, flat_luts())
    adapt_documents(tiny_gpt(), ledger, **LORA, seed=cfg.train.seed, autocast_bf16=bf16)
    others = [second_nll]
    if unadapted:
        others.insert(0, unadapted_losses(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=16,
                                          batch_tokens=cfg.eval.batch_tokens, autocast_bf16=bf16)[0])
    expected = mix_scores(mix_passes(ledger.token_losses(), others, tokens), tokens, 2, 64)
    assert r.loss * r.num_tokens == pytest.approx(float(expected.double().sum()), rel=1e-9)
    off = evaluate_model(tiny_gpt(), ValData(tokens=tokens, luts=flat_luts(), sp=None),
                         dataclasses.replace(cfg, ttt=dataclasses.replace(cfg.ttt, lora_mix_lr=0.0)), info)
    assert not off.ledger.lora_mixed and off.lora_mix is None and "lora_mix" not in off.stages
    assert off.bpb != r.bpb


def test_a_second_lora_pass_needs_lora_and_a_learning_rate_of_zero_or_more() -> None:
    cfg = get_preset("test-tiny")
    with pytest.raises(ConfigError, match="ttt.lora_mix_lr=0.01 needs eval.ttt lora"):
        dataclasses.replace(cfg, ttt=dataclasses.replace(cfg.ttt, lora_mix_lr=0.01)).validate()
    with pytest.raises(ConfigError, match="ttt.lora_mix_lr=-0.1"):
        TTTConfig(lora_mix_lr=-0.1).validate()
    with pytest.raises(ConfigError, match="ttt.lora_mix_rank=-1"):
        TTTConfig(lora_mix_rank=-1).validate()
    dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, ttt="lora"),
                        ttt=dataclasses.replace(cfg.ttt, lora_mix_lr=0.01)).validate()


def test_the_ledger_refuses_a_second_pass_of_another_length() -> None:
    tokens = doc_stream([30, 20], seed=10)
    with pytest.raises(ValueError, match="second LoRA pass losses"):
        TokenLedger(tokens, flat_luts(), lora_mix_nll=torch.zeros(tokens.numel() - 1))


def test_needs_a_ttt_mode() -> None:
    with pytest.raises(ConfigError, match="eval.mix_unadapted"):
        EvalConfig(mix_unadapted=True).validate()
    EvalConfig(mix_unadapted=True, ttt="lora").validate()


def test_mixing_the_unadapted_pass_makes_every_tensor_on_the_ledgers_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # What only a GPU run would show: the unadapted pass's gathered losses and the mixture's bins are made on
    # the ledger's device (tests/test_devices.py's interception sends a factory without `device=` to meta).
    from test_devices import Collectives, DevicelessFactoriesGoToMeta

    tokens = doc_stream([60, 50, 70], seed=8)

    def run() -> float:
        fixed = unadapted_losses(model, tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=256)[0]
        ledger = TokenLedger(tokens, flat_luts(), ngram_order=3, unadapted_nll=fixed * 0.9)
        with eval_mode(model):
            score_rows(model, ledger, window_rows(window_plan(len(tokens), 32, 32)), batch_rows=8)
        totals, report = ledger.finish()
        assert report.unadapted
        return float(totals.nll_sum)

    model = tiny_gpt()  # built outside: its init makes host tensors and moves them
    plain = run()
    seen = Collectives(monkeypatch)
    with DevicelessFactoriesGoToMeta():
        assert run() == plain
    assert all(device == torch.device("cpu") for _, device in seen.seen), seen.seen
