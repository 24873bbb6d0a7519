"""Evaluators: the window plan scores every prediction once, stride == seq_len reproduces the plain
evaluation exactly, ranks partition the work, and more context lowers the loss of a model that uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_text import TINY_VOCAB, make_documents
from test_ttt import one_thread  # noqa: F401  (an autouse fixture)
from torch import nn

from pgolf.errors import UserError
from pgolf.eval.bpb import target_byte_counts
from pgolf.eval.bpb import LedgerError, TokenLedger
from pgolf.eval.sliding import (evaluate, evaluate_standard, rank_share, score_rows, truncate_for_eval, window_plan,
                                window_rows)
from pgolf.tokenizer import BOS_ID, ByteLuts, build_byte_luts, encode_documents, load_tokenizer


class CacheBigramModel(nn.Module):
    """Predicts the next token from bigram counts seen earlier in the same window, so its loss falls
    as context grows; every row is computed independently and exactly the same way in any batch."""

    def __init__(self, vocab_size: int, alpha: float = 0.1) -> None:
        super().__init__()
        self.vocab_size, self.alpha = vocab_size, alpha
        self.calls_in_train_mode = 0

    def per_token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        self.calls_in_train_mode += int(self.training)
        T = input_ids.shape[1]
        earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # (T, T): j < t
        same_prev = input_ids[:, :, None] == input_ids[:, None, :]  # (B, T, T)
        same_next = target_ids[:, :, None] == target_ids[:, None, :]  # (B, T, T)
        seen = (same_prev & earlier).sum(-1).float()  # (B, T)
        followed = (same_prev & same_next & earlier).sum(-1).float()  # (B, T)
        return -torch.log((followed + self.alpha) / (seen + self.alpha * self.vocab_size))  # (B, T)


class PositionModel(nn.Module):
    """nll = 1 / (1 + position in window): the total shows exactly which positions were scored."""

    def per_token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], dtype=torch.float32)  # (T,)
        return (1.0 / (1.0 + pos)).expand(input_ids.shape)  # (B, T)


@pytest.fixture(scope="module")
def stream(tiny_tokenizer: Path) -> tuple[torch.Tensor, object]:
    """A flat validation stream (BOS before each document) and the tokenizer's byte tables."""
    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    docs = encode_documents(sp, make_documents(12_000, seed=7))
    tokens = torch.cat([torch.tensor([BOS_ID] + d.tolist()) for d in docs])  # (N,)
    return tokens, build_byte_luts(sp, TINY_VOCAB)


def test_truncate_for_eval() -> None:
    tokens = torch.arange(103)
    assert truncate_for_eval(tokens, 10).numel() == 101
    assert truncate_for_eval(tokens[:11], 10).numel() == 11
    with pytest.raises(UserError, match="validation set has 10 tokens.*lower --eval.seq_len"):
        truncate_for_eval(tokens[:10], 10)


def _scored_positions(plan: list[tuple[int, int, int]]) -> list[int]:
    return [ws + j + 1 for ws, wlen, s in plan for j in range(s, wlen)]


@pytest.mark.parametrize("seq_len", [1, 4, 7, 16])
def test_window_plan_scores_each_prediction_once(seq_len: int) -> None:
    for stride in range(1, seq_len + 1):
        for total in range(1, 3 * seq_len + 2 * stride + 3):
            plan = window_plan(total, seq_len, stride)
            assert sorted(_scored_positions(plan)) == list(range(1, total)), (total, seq_len, stride)
            assert all(ws + wlen <= total - 1 for ws, wlen, _ in plan)  # never reads past the stream
            assert all(wlen == seq_len for _, wlen, _ in plan[:-1])  # only the last may be short
            assert all(wlen - s == stride for _, wlen, s in plan[1:-1])  # middle windows score `stride`
            if plan:
                assert plan[0][:1] + plan[0][2:] == (0, 0)  # the first scores all its predictions


def test_window_plan_rejects_bad_stride() -> None:
    with pytest.raises(ValueError):
        window_plan(100, 8, 9)
    with pytest.raises(ValueError):
        window_plan(100, 8, 0)


def test_non_overlapping_sliding_equals_standard(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    model = CacheBigramModel(TINY_VOCAB)
    for seq_len, batch_tokens in [(32, 32), (32, 96), (64, 10_000)]:
        val = truncate_for_eval(tokens, seq_len)
        slid = evaluate(model, val, luts, seq_len=seq_len, stride=seq_len, batch_tokens=batch_tokens)
        std = evaluate_standard(model, val, luts, seq_len=seq_len, batch_tokens=batch_tokens)
        assert (slid.loss, slid.bpb, slid.num_tokens, slid.num_bytes) == (std.loss, std.bpb, std.num_tokens,
                                                                          std.num_bytes)
        assert std.num_tokens == val.numel() - 1


def test_sliding_scores_the_whole_stream(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    val = tokens[:1001]  # not truncated: predictions are not a multiple of seq_len or stride
    whole_bytes = int(target_byte_counts(val[:-1], val[1:], luts).sum())
    for seq_len, stride in [(64, 16), (64, 7), (50, 50), (2000, 64)]:
        r = evaluate(CacheBigramModel(TINY_VOCAB), val, luts, seq_len=seq_len, stride=stride, batch_tokens=256)
        assert (r.num_tokens, r.num_bytes) == (1000, whole_bytes)


def test_evaluator_scores_exactly_the_planned_positions(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    val = tokens[:777]
    for seq_len, stride in [(32, 8), (32, 5), (32, 32)]:
        plan = window_plan(val.numel(), seq_len, stride)
        per_pos = 1.0 / (1.0 + torch.arange(seq_len, dtype=torch.float32))  # (T,) what the model returns
        expected = sum(per_pos[s:wlen].double().sum().item() for _, wlen, s in plan)
        r = evaluate(PositionModel(), val, luts, seq_len=seq_len, stride=stride, batch_tokens=100)
        assert r.loss * r.num_tokens == pytest.approx(expected, rel=1e-9)


def _share_totals(model: nn.Module, val: torch.Tensor, luts: object, rows: np.ndarray, batch_rows: int):
    ledger = TokenLedger(val, luts)
    with torch.inference_mode():
        score_rows(model, ledger, rows, batch_rows=batch_rows)
    return ledger.totals()


def test_two_ranks_sum_to_one(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    model = CacheBigramModel(TINY_VOCAB)
    val = truncate_for_eval(tokens[:3000], 32)
    plan = window_plan(val.numel(), 32, 8)
    full = _share_totals(model, val, luts, window_rows(plan), 4)
    halves = [_share_totals(model, val, luts, window_rows(rank_share(plan, r, 2)), 4) for r in (0, 1)]
    assert sum(h.token_count for h in halves) == full.token_count == val.numel() - 1
    assert sum(h.byte_count for h in halves) == full.byte_count
    assert float(sum(h.nll_sum for h in halves)) == pytest.approx(float(full.nll_sum), rel=1e-12)
    assert sum(len(rank_share(plan, r, 3)) for r in range(3)) == len(plan)
    # one rank's share is not the whole evaluation: without its peers the ledger refuses to report
    with pytest.raises(LedgerError, match="never scored"):
        evaluate(model, val, luts, seq_len=32, stride=8, batch_tokens=128, rank=0, world_size=2)
    std = [evaluate_standard(model, val, luts, seq_len=32, batch_tokens=64, rank=r, world_size=2) for r in (0, 1)]
    assert sum(r.num_tokens for r in std) == val.numel() - 1 and sum(r.num_bytes for r in std) == int(full.byte_count)


def test_more_context_lowers_the_loss(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    model = CacheBigramModel(TINY_VOCAB)
    val = truncate_for_eval(tokens, 64)
    std = evaluate_standard(model, val, luts, seq_len=64, batch_tokens=4096)
    slid = evaluate(model, val, luts, seq_len=64, stride=16, batch_tokens=4096)
    assert slid.num_tokens == std.num_tokens and slid.num_bytes == std.num_bytes
    assert slid.bpb < std.bpb - 0.05


def test_eval_mode_during_and_training_mode_restored(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    model = CacheBigramModel(TINY_VOCAB)
    model.train()
    evaluate(model, tokens[:200], luts, seq_len=32, stride=8, batch_tokens=64, progress=True)
    evaluate_standard(model, tokens[:200], luts, seq_len=32, batch_tokens=64)
    assert model.calls_in_train_mode == 0 and model.training
    model.eval()
    evaluate(model, tokens[:200], luts, seq_len=32, stride=8, batch_tokens=64)
    assert not model.training


class TinyNeuralModel(nn.Module):
    """Embedding, causal running mean, linear head: enough to exercise bf16 autocast."""

    def __init__(self, vocab_size: int, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(vocab_size, dim), nn.Linear(dim, vocab_size)

    def per_token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[:, None]  # (B, T, D)
        logits = self.head(h).float()  # (B, T, V)
        return nn.functional.cross_entropy(logits.transpose(1, 2), target_ids, reduction="none")  # (B, T)


def test_bf16_autocast_is_close_to_fp32(stream: tuple[torch.Tensor, object]) -> None:
    tokens, luts = stream
    model = TinyNeuralModel(TINY_VOCAB)
    val = truncate_for_eval(tokens[:2000], 64)
    fp32 = evaluate(model, val, luts, seq_len=64, stride=32, batch_tokens=512)
    bf16 = evaluate(model, val, luts, seq_len=64, stride=32, batch_tokens=512, autocast_bf16=True)
    assert bf16.bpb == pytest.approx(fp32.bpb, rel=2e-2) and bf16.num_bytes == fp32.num_bytes
    assert fp32.seconds > 0


def test_sliding_equals_a_slow_reference_on_a_small_gpt_at_any_length() -> None:
    # One forward per prediction with exactly the context the sliding rule promises it: the window
    # starting at the smallest multiple of the stride that still holds the target, or at 0.
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (90,), generator=g)  # (N,)
    no = torch.zeros(64, dtype=torch.bool)
    table = ByteLuts(torch.ones(64, dtype=torch.int16), no, no)
    for seq_len, stride in [(24, 5), (70, 16)]:  # 70: past any rotary length cached so far
        ledger = TokenLedger(tokens, table)
        with torch.inference_mode():
            score_rows(model, ledger, window_rows(window_plan(tokens.numel(), seq_len, stride)), batch_rows=3)
            reference = torch.zeros(tokens.numel())
            for t in range(1, tokens.numel()):
                ws = max(0, -(-(t - seq_len) // stride) * stride)
                reference[t] = model.per_token_nll(tokens[None, ws:t], tokens[None, ws + 1: t + 1])[0, -1]
        assert torch.allclose(ledger.token_losses(), reference, atol=2e-5), (seq_len, stride)


def test_compiled_scoring_compiles_the_steady_batch_once_and_scores_the_same() -> None:
    # eval.compile: the first window (scored from column 0) and the short last batches run eager, every other
    # batch through one compiled graph; a counting backend sees a single compilation and the scores agree.
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT

    def fresh() -> GPT:  # same weights, RoPE tables not yet grown
        torch.manual_seed(0)
        return GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)).eval()

    tokens = torch.randint(0, 64, (400,), generator=torch.Generator().manual_seed(1))  # (N,)
    no = torch.zeros(64, dtype=torch.bool)
    table = ByteLuts(torch.ones(64, dtype=torch.int16), no, no)
    graphs: list[int] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN202
        graphs.append(len(example_inputs))
        return gm.forward

    for stride in (8, 32):  # sliding, and non-overlapping windows (whose first batch is already steady)
        graphs.clear()
        eager = evaluate(fresh(), tokens, table, seq_len=32, stride=stride, batch_tokens=96)
        compiled = evaluate(fresh(), tokens, table, seq_len=32, stride=stride, batch_tokens=96,
                            compile_backend=counting_backend)
        assert len(graphs) == 1 and "compile" in compiled.stages and "compile" not in eager.stages, stride
        assert compiled.num_tokens == eager.num_tokens == 399 and compiled.bpb == pytest.approx(eager.bpb, abs=1e-6)


def test_eval_compile_reaches_the_scored_and_pre_quant_evaluations_but_not_the_periodic_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pgolf import scoring
    from pgolf.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
    from pgolf.dist import DistInfo
    from pgolf.model.gpt import GPT

    graphs: list[int] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN202
        graphs.append(len(example_inputs))
        return gm.forward

    monkeypatch.setattr(scoring, "COMPILE_BACKEND", counting_backend)
    no = torch.zeros(64, dtype=torch.bool)
    val = scoring.ValData(tokens=torch.randint(0, 64, (257,), generator=torch.Generator().manual_seed(2)),
                          luts=ByteLuts(torch.ones(64, dtype=torch.int16), no, no), sp=None)
    cfg = RunConfig(model=ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1),
                    train=TrainConfig(train_seq_len=32, train_batch_tokens=64, grad_accum_steps=1),
                    eval=EvalConfig(batch_tokens=64, compile=True, dtype="float32"))  # as run_eval's False above
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    model = GPT(cfg.model)
    periodic = scoring.run_eval(model, val, cfg.eval, 32, 32, info, False, compiled=False)
    assert not graphs and "compile" not in periodic.stages
    pre = scoring.run_eval(model, val, cfg.eval, 32, 32, info, False)
    scored = scoring.evaluate_model(model, val, cfg, info)
    assert "compile" in pre.stages and "compile" in scored.stages and graphs
    assert pre.bpb == pytest.approx(periodic.bpb, abs=1e-6) and scored.bpb == pytest.approx(pre.bpb, abs=1e-6)
