"""Score-first chunked TTT: the chunk plan covers every prediction once and releases only scored
chunks, a cheating adapter is stopped by the ledger, learning rate 0 reproduces the plain sliding
score exactly, and real adaptation changes (here: lowers) the score."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config import ModelConfig
from pgolf.eval.bpb import AdaptationView, LedgerError
from pgolf.eval.sliding import evaluate, rank_share, window_plan
from pgolf.eval.ttt import SGDChunkAdapter, chunk_plan, chunk_span, cosine_lr, evaluate_chunked
from pgolf.model.gpt import GPT
from pgolf.tokenizer import BOS_ID, ByteLuts

VOCAB = 64


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread: no waiting on a second core that another job holds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=VOCAB, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1),
               attn_backend="math")


def flat_luts() -> ByteLuts:
    base = torch.full((VOCAB,), 2, dtype=torch.int16)  # (V,)
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[:4] = True
    return ByteLuts(base, torch.zeros(VOCAB, dtype=torch.bool), boundary)


def repetitive_stream(n: int, seed: int = 0) -> torch.Tensor:
    """A few short phrases repeated at random: easy to learn at test time."""
    g = torch.Generator().manual_seed(seed)
    phrases = [torch.randint(4, VOCAB, (int(k),), generator=g) for k in torch.randint(3, 9, (6,), generator=g)]
    parts, total = [torch.tensor([BOS_ID])], 1
    while total < n:
        p = phrases[int(torch.randint(0, 6, (1,), generator=g))]
        parts.append(p)
        total += p.numel()
    return torch.cat(parts)[:n]


def adapter(model: GPT, lr: float, seq_len: int, **kw: object) -> SGDChunkAdapter:
    return SGDChunkAdapter(model, lr=lr, momentum=0.9, epochs=kw.get("epochs", 2), batch_seqs=4, grad_clip=1.0,
                           seq_len=seq_len)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 400), seq_len=st.integers(1, 48), stride_frac=st.floats(0.01, 1.0),
       chunk=st.integers(1, 120), world=st.integers(1, 5))
def test_chunk_plan_scores_each_prediction_once_and_chunks_are_scored_before_release(
        n: int, seq_len: int, stride_frac: float, chunk: int, world: int) -> None:
    stride = max(1, int(seq_len * stride_frac))
    chunks = chunk_plan(window_plan(n, seq_len, stride), chunk, n)
    assert len(chunks) == max(1, math.ceil((n - 1) / chunk))
    count = [0] * n
    for c, windows in enumerate(chunks):
        for rank in range(world):
            for ws, wlen, s in rank_share(windows, rank, world):
                assert (ws + s) // chunk == c  # a window belongs to the chunk of its first scored prediction
                for p in range(ws + s + 1, ws + wlen + 1):
                    count[p] += 1
        lo, hi = chunk_span(c, chunk, n)
        scored_so_far = set(p for p in range(1, n) if count[p])
        assert all(p in scored_so_far for p in range(lo + 1, hi))  # the released span is fully scored
        assert lo == 0 or lo in scored_so_far
    assert count[0] == 0 and all(k == 1 for k in count[1:])


def test_cosine_lr_over_chunks() -> None:
    assert cosine_lr(0.01, 0, 5) == pytest.approx(0.01)
    assert cosine_lr(0.01, 2, 5) == pytest.approx(0.005)
    assert cosine_lr(0.01, 4, 5) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(0.01, 0, 1) == pytest.approx(0.01)


class PeekingAdapter:
    """Cheats: asks for the next chunk's tokens after scoring this one."""

    def __init__(self) -> None:
        self.calls = 0

    def adapt(self, view: AdaptationView, lo: int, hi: int, chunk: int, num_chunks: int) -> None:
        self.calls += 1
        view.release(lo, hi)  # legal: this chunk is scored
        view.release(hi - 1, hi + 8)  # the next chunk is not


def test_cheating_adapter_is_stopped() -> None:
    tokens = repetitive_stream(300)
    cheat = PeekingAdapter()
    with pytest.raises(LedgerError, match="not yet scored"):
        evaluate_chunked(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=8, batch_tokens=256, chunk_tokens=64,
                         adapter=cheat)
    assert cheat.calls == 1


def test_learning_rate_zero_is_exactly_the_sliding_score() -> None:
    tokens = repetitive_stream(600)
    plain = evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=8, batch_tokens=256)
    model = tiny_gpt()
    ttt = evaluate_chunked(model, tokens, flat_luts(), seq_len=32, stride=8, batch_tokens=256, chunk_tokens=128,
                           adapter=adapter(model, 0.0, 32))
    assert (ttt.loss, ttt.bpb, ttt.num_tokens, ttt.num_bytes) == (plain.loss, plain.bpb, plain.num_tokens,
                                                                  plain.num_bytes)
    assert ttt.ledger.num_adapted == 4 * 128  # chunks 0..3 of 5 were given to the adapter, the last never
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_gpt().parameters()))


def test_adaptation_learns_from_scored_chunks() -> None:
    tokens = repetitive_stream(1200)
    plain = evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=512)
    model = tiny_gpt()
    ttt = evaluate_chunked(model, tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=512, chunk_tokens=256,
                           adapter=adapter(model, 0.05, 32))
    assert ttt.num_tokens == plain.num_tokens and ttt.num_bytes == plain.num_bytes
    assert ttt.bpb < plain.bpb - 0.05
    assert set(ttt.stages) == {"score", "adapt"}
