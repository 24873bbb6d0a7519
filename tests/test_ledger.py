"""The token ledger: a position is scored once, adaptation gets only scored spans, the totals are the
metric's, and a full sliding evaluation through it scores every prediction exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.eval.bpb import AdaptationView, LedgerError, TokenLedger, target_byte_counts
from pgolf.eval.sliding import rank_share, score_rows, window_plan, window_rows
from pgolf.tokenizer import BOS_ID, ByteLuts

VOCAB = 16


def luts() -> ByteLuts:
    base = torch.arange(VOCAB, dtype=torch.int16) % 3  # (V,) 0..2 bytes
    space = torch.arange(VOCAB) % 2 == 0  # (V,)
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[BOS_ID] = True
    return ByteLuts(base, space, boundary)


def stream(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (n,), generator=g)  # (N,)
    tokens[0] = BOS_ID
    return tokens


class HashModel(torch.nn.Module):
    """nll depends on the target and its previous token only, so windows give the same loss anywhere."""

    def per_token_nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x * 7 + y * 3) % 11).float() / 10 + 0.1  # (B, T)


def commit_loss(ledger: TokenLedger, rows: list[tuple[int, int, int]], value: float = 1.0) -> None:
    arr = np.asarray(rows, dtype=np.int64)
    width = int(arr[:, 2].max())
    ledger.commit(arr, torch.full((len(rows), width), value))


def test_second_score_is_refused() -> None:
    ledger = TokenLedger(stream(40), luts())
    commit_loss(ledger, [(0, 0, 10)])
    with pytest.raises(LedgerError, match="already scored"):
        commit_loss(ledger, [(5, 4, 6)])  # position 10 again
    commit_loss(ledger, [(5, 5, 6)])  # position 11 is new
    with pytest.raises(LedgerError, match="outside"):
        commit_loss(ledger, [(30, 0, 10)])  # past the stream's end


def test_release_only_after_scoring_and_view_exposes_only_release() -> None:
    tokens = stream(40)
    ledger = TokenLedger(tokens, luts())
    view = AdaptationView(ledger)
    with pytest.raises(LedgerError, match="not yet scored"):
        view.release(0, 5)
    commit_loss(ledger, [(0, 0, 10)])  # predictions 1..10
    released = view.release(0, 11)
    assert torch.equal(released, tokens[:11])
    released.zero_()  # an adapter scribbling on its copy changes nothing the scorer reads
    x, _ = ledger.window_batch(torch.tensor([[0, 0, 11]]), 11)
    assert torch.equal(x[0], tokens[:11])
    with pytest.raises(LedgerError):
        view.release(5, 12)  # 11 is not scored
    with pytest.raises(LedgerError):
        view.release(12, 14)  # neither the context token 12 nor 13
    assert [n for n in dir(view) if not n.startswith("_")] == ["release", "release_losses"]


def test_first_token_of_a_span_may_be_a_document_bos() -> None:
    tokens = stream(30)
    tokens[20] = BOS_ID
    ledger = TokenLedger(tokens, luts())
    commit_loss(ledger, [(20, 0, 5)])  # predictions 21..25 of the document starting at 20
    assert torch.equal(ledger.release(20, 26), tokens[20:26])  # 20 itself (BOS) is not scored yet
    tokens[20] = 5
    other = TokenLedger(tokens, luts())
    commit_loss(other, [(20, 0, 5)])
    with pytest.raises(LedgerError):
        other.release(20, 26)  # an unscored ordinary token is information, not a boundary


def test_release_losses_are_those_just_committed() -> None:
    ledger = TokenLedger(stream(40), luts())
    rows = np.asarray([(0, 2, 6), (10, 0, 4)], dtype=np.int64)
    nll = torch.rand(2, 6, requires_grad=True)
    ledger.commit(rows, nll * 2)
    with pytest.raises(LedgerError, match="not yet scored"):
        ledger.release_losses(rows[:1])  # its window's context (predictions 1 and 2) is not scored
    ledger = TokenLedger(stream(40), luts())
    commit_loss(ledger, [(0, 0, 2)])
    ledger.commit(rows, nll * 2)
    got, mask = AdaptationView(ledger).release_losses(rows[:1])
    assert got.requires_grad and got.shape == (1, 6)
    assert mask.tolist() == [[False, False, True, True, True, True]]
    with pytest.raises(LedgerError):
        ledger.release_losses(rows[1:])  # not a prefix of the committed rows
    ledger.commit(np.asarray([(20, 0, 3)]), torch.ones(1, 3))  # a graph-less commit clears them
    with pytest.raises(LedgerError):
        ledger.release_losses(rows[:1])


def test_totals_are_the_metric() -> None:
    tokens, table = stream(50), luts()
    ledger = TokenLedger(tokens, table)
    losses = torch.rand(1, 49)
    ledger.commit(np.asarray([(0, 0, 49)]), losses)
    totals, report = ledger.finish()
    assert float(totals.nll_sum) == pytest.approx(float(losses.double().sum()), rel=1e-12)
    assert float(totals.byte_count) == float(target_byte_counts(tokens[:-1], tokens[1:], table).sum())
    assert (report.num_positions, report.num_scored, report.num_adapted) == (49, 49, 0)
    assert torch.equal(ledger.token_losses()[1:], losses[0])


def test_finish_refuses_a_partial_evaluation() -> None:
    ledger = TokenLedger(stream(50), luts())
    commit_loss(ledger, [(0, 0, 30)])
    with pytest.raises(LedgerError, match="19 predictions were never scored"):
        ledger.finish()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), seq_len=st.integers(1, 40), stride_frac=st.floats(0.01, 1.0),
       world=st.integers(1, 4), batch=st.integers(1, 7))
def test_sliding_through_the_ledger_scores_each_prediction_once(n: int, seq_len: int, stride_frac: float,
                                                                world: int, batch: int) -> None:
    stride = max(1, int(seq_len * stride_frac))
    tokens, model = stream(n, seed=n), HashModel()
    plan = window_plan(n, seq_len, stride)
    ledgers = [TokenLedger(tokens, luts()) for _ in range(world)]
    for rank, ledger in enumerate(ledgers):
        score_rows(model, ledger, window_rows(rank_share(plan, rank, world)), batch_rows=batch)
    scored = sum(ledger._mine.astype(int) for ledger in ledgers)
    assert scored[0] == 0 and (scored[1:] == 1).all()
    expected = model.per_token_nll(tokens[None, :-1], tokens[None, 1:])[0]  # (N-1,) context-free by design
    got = sum(ledger.token_losses() for ledger in ledgers)[1:]
    assert torch.allclose(got, expected)
