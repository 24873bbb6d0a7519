"""Per-document LoRA TTT: documents and their chunks cover every prediction once with only the
document's own prefix as context; at learning rate 0 it is exactly per-document evaluation of the
base model; one document's tokens never reach another document's scores (same batch or a later one,
so adapters are isolated and reset); and adaptation lowers the loss of repetitive documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ttt import VOCAB, flat_luts, one_thread, tiny_gpt  # noqa: F401  (one_thread: autouse fixture)

from pgolf.eval.bpb import TokenLedger
from pgolf.eval.lora import (DocumentAdapters, adapt_documents, document_batches, document_rows, document_spans,
                             evaluate_lora, lora_init, lora_targets)
from pgolf.model.gpt import GPT
from pgolf.tokenizer import BOS_ID

SETTINGS = dict(seq_len=24, chunk=8, batch_docs=2, lora_rank=2, alpha=4.0)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 200), bos=st.lists(st.integers(0, 199), max_size=30), chunk_frac=st.floats(0.01, 1.0),
       seq_len=st.integers(1, 40))
def test_documents_and_chunks_cover_each_prediction_once(n: int, bos: list[int], chunk_frac: float,
                                                         seq_len: int) -> None:
    bos_positions = sorted({b for b in bos if b < n})
    chunk = max(1, int(seq_len * chunk_frac))
    spans = document_spans(bos_positions, n)
    count = [0] * n
    for start, end in spans:
        assert start == 0 or start in bos_positions
        assert not any(start < b < end - 1 for b in bos_positions)  # no other document inside the inputs
        for base, lo, hi in document_rows((start, end), chunk, seq_len):
            assert start <= base and base + hi <= end - 1 and hi <= seq_len and hi - lo <= chunk  # own prefix only
            for p in range(base + lo + 1, base + hi + 1):
                count[p] += 1
    assert count[0] == 0 and all(k == 1 for k in count[1:])
    batches = document_batches(spans, 3)
    lengths = [e - s for b in batches for s, e in b]
    assert sorted(lengths, reverse=True) == lengths and sum(len(b) for b in batches) == len(spans)


def doc_stream(lengths: list[int], seed: int = 0, repetitive: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        body = torch.randint(4, VOCAB, (n,), generator=g)
        if repetitive:
            body = body[:5].repeat(n // 5 + 1)[:n]
        docs.append(torch.cat([torch.tensor([BOS_ID]), body]))
    return torch.cat(docs)


def token_losses(tokens: torch.Tensor, lr: float, **kw: object) -> torch.Tensor:
    ledger = TokenLedger(tokens, flat_luts())
    adapt_documents(tiny_gpt(), ledger, lr=lr, **{**SETTINGS, **kw})
    totals, report = ledger.finish()
    assert report.num_scored == tokens.numel() - 1
    return ledger.token_losses()


def test_learning_rate_zero_is_per_document_evaluation_of_the_base_model() -> None:
    tokens = doc_stream([30, 7, 55, 12, 1])
    got = token_losses(tokens, lr=0.0)
    model = tiny_gpt()
    expected = torch.zeros_like(got)
    with torch.no_grad():
        for span in document_spans((tokens == BOS_ID).nonzero().flatten().tolist(), tokens.numel()):
            for base, lo, hi in document_rows(span, SETTINGS["chunk"], SETTINGS["seq_len"]):
                nll = model.per_token_nll(tokens[None, base: base + hi], tokens[None, base + 1: base + hi + 1])[0]
                expected[base + lo + 1: base + hi + 1] = nll[lo:hi]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_a_document_never_reaches_another_documents_scores(steps: int) -> None:
    lengths = [40, 33, 26, 19]  # batches of 2, longest first: [d0, d1], [d2, d3]
    tokens = doc_stream(lengths)
    starts = np.cumsum([0] + [n + 1 for n in lengths])
    base = token_losses(tokens, lr=0.05, steps=steps)
    frozen = token_losses(tokens, lr=0.0)
    for changed in range(4):
        other = tokens.clone()
        lo, hi = starts[changed] + 1, starts[changed + 1]
        other[lo:hi] = doc_stream([hi - lo], seed=100 + changed)[1:]  # same length, same boundaries
        moved = token_losses(other, lr=0.05, steps=steps)
        inside = torch.zeros(tokens.numel(), dtype=torch.bool)
        inside[lo: hi + 1] = True  # its predictions, up to the next document's BOS
        assert torch.equal(moved[~inside], base[~inside]), changed  # exactly: nothing leaks, in a batch or after
        assert not torch.allclose(moved[inside], base[inside])
    unchanged_first_chunks = torch.zeros(tokens.numel(), dtype=torch.bool)
    for s in starts[:-1]:
        unchanged_first_chunks[s + 1: s + 1 + SETTINGS["chunk"]] = True
    # adaptation happened (later chunks differ from lr 0), and never before a document's first scored chunk
    assert torch.equal(base[unchanged_first_chunks], frozen[unchanged_first_chunks])
    assert not torch.allclose(base[~unchanged_first_chunks], frozen[~unchanged_first_chunks])


def test_adaptation_helps_repetitive_documents_and_leaves_the_model_as_it_was() -> None:
    tokens = doc_stream([120, 90, 100], repetitive=True)
    model = tiny_gpt()
    before = [p.detach().clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    kw = dict(seq_len=32, chunk=16, batch_docs=2, lora_rank=4, alpha=8.0)
    adapted = evaluate_lora(model, tokens, flat_luts(), lr=0.03, **kw)
    plain = evaluate_lora(tiny_gpt(), tokens, flat_luts(), lr=0.0, **kw)
    assert adapted.num_bytes == plain.num_bytes and adapted.bpb < plain.bpb - 0.05
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert [p.requires_grad for p in model.parameters()] == flags


def test_more_steps_per_chunk_read_scored_windows_through_the_view_and_adapt_further() -> None:
    # Steps after the first take a new forward over the chunk's windows, asked of the ledger (one release per
    # document per extra step); they move the later chunks' scores, and on repetitive text lower them.
    tokens = doc_stream([120, 90, 100], repetitive=True)
    kw = dict(seq_len=32, chunk=16, batch_docs=2, lora_rank=4, alpha=8.0, lr=0.01)
    releases = {}
    for steps in (1, 3):
        ledger = TokenLedger(tokens, flat_luts())
        adapt_documents(tiny_gpt(), ledger, steps=steps, **kw)
        releases[steps] = (ledger.num_releases, ledger.finish()[0])
    (one, t1), (three, t3) = releases[1], releases[3]
    assert three - one == 2 * sum(len(document_rows(s, 16, 32)) - 1
                                  for s in document_spans((tokens == BOS_ID).nonzero().flatten().tolist(), len(tokens)))
    assert t1.token_count == t3.token_count and t1.byte_count == t3.byte_count
    assert float(t3.nll_sum) < float(t1.nll_sum)


class AllColumnsGPT(GPT):
    """Runs the last layer over every column and slices afterwards: the evaluation before the trim."""

    def hidden_states(self, input_ids: torch.Tensor, keep_from: int = 0) -> torch.Tensor:
        return super().hidden_states(input_ids)[:, keep_from:]


def test_last_layer_on_the_scored_columns_only_scores_and_adapts_alike() -> None:
    # Each chunk runs the last layer and the head only from the first scored column on; the losses, and so
    # the gradients the adapters learn from, must be those of the full forward.
    tokens = doc_stream([70, 45, 31], seed=4)
    kw = dict(seq_len=24, chunk=8, batch_docs=2, lora_rank=2, alpha=4.0, lr=0.05)
    got = evaluate_lora(tiny_gpt(), tokens, flat_luts(), **kw)
    model = tiny_gpt()
    full = AllColumnsGPT(model.cfg, attn_backend="math")
    full.load_state_dict(model.state_dict())
    expected = evaluate_lora(full, tokens, flat_luts(), **kw)
    assert got.num_tokens == expected.num_tokens and abs(got.bpb - expected.bpb) < 1e-6
    assert got.bpb != evaluate_lora(tiny_gpt(), tokens, flat_luts(), **{**kw, "lr": 0.0}).bpb  # it did adapt


def test_adapters_target_attention_and_mlp_outputs_and_start_as_identity() -> None:
    model = tiny_gpt()
    targets = lora_targets(model)
    assert len(targets) == 5 * model.cfg.num_layers
    init = lora_init(model, rank=2, seed=3, device=torch.device("cpu"))
    adapters = DocumentAdapters(model, 2, init, alpha=4.0)
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        plain = model.per_token_nll(x, x)
        adapted = adapters.token_nll(model, x, x)
    assert torch.allclose(plain, adapted, atol=1e-6)  # B = 0: the base model exactly
    assert torch.equal(adapters.deltas[0].A[0], adapters.deltas[0].A[1])  # every document starts alike
    assert adapters.deltas[0].A.data_ptr() != init[0].data_ptr()  # ...from its own copy
    with pytest.raises(ValueError):
        document_rows((0, 50), chunk=9, seq_len=8)
