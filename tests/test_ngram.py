"""The causal n-gram caches of `eval.ngram_order` (the stream so far, the document so far): their probabilities
are those of the whole distribution counted directly from the prefix (which sums to one), nothing at a
position moves when later tokens or later model scores change, the Bayesian mixture is never much worse
than its best fixed weights, its forgetting posterior is the direct recurrence and follows a switch, and the
ledger reports the mixture of the scores it committed."""

from __future__ import annotations

import math

import pytest
import torch
from test_ttt import flat_luts, one_thread, repetitive_stream, tiny_gpt  # noqa: F401  (one_thread: autouse)

from pgolf.config import ConfigError, EvalConfig
from pgolf.eval import ngram
from pgolf.eval.bpb import TokenLedger
from pgolf.eval.ngram import (WEIGHT_GRID, cache_distribution, cache_probs, context_documents, mix_scores,
                              mixing_inputs, probe_cache)
from pgolf.eval.sliding import eval_mode, evaluate, score_rows, window_plan, window_rows
from pgolf.tokenizer import BOS_ID


def stream(n: int, vocab: int, seed: int) -> torch.Tensor:
    """Random tokens with a repeated piece, so that contexts of every order recur."""
    g = torch.Generator().manual_seed(seed)
    piece = torch.randint(0, vocab, (n // 4,), generator=g)
    return torch.cat([piece, torch.randint(0, vocab, (n // 4,), generator=g), piece, piece])[:n]


def highest_seen_order(x: list[int], t: int, order: int, first: int) -> int:
    """The largest k whose context before t occurred before, at positions from `first` on."""
    seen = [k for k in range(min(order, t) + 1) if any(x[s - k: s] == x[t - k: t] for s in range(max(k, first), t))]
    return max(seen) if seen else 0


def context_state(x: list[int], t: int, k: int, first: int) -> int:
    """The state `cache_probs` gives at t, counted directly: 2 x the bin of how often the order-k context
    before t occurred before (from `first` on) + 1 if a single token followed all those occurrences."""
    follow = [x[s] for s in range(max(k, first), t) if x[s - k: s] == x[t - k: t]]
    if not follow:
        return 0
    count_bin = sum(len(follow) > edge for edge in ngram.COUNT_BINS)
    return 2 * count_bin + (len(set(follow)) == 1)


@pytest.mark.parametrize("document", [False, True])
@pytest.mark.parametrize("vocab,order,seed", [(5, 3, 0), (11, 6, 1), (64, 2, 2), (3, 0, 3)])
def test_probabilities_are_the_directly_counted_distribution(vocab: int, order: int, seed: int,
                                                             document: bool) -> None:
    x = stream(120, vocab, seed)
    x[[0, 33, 34, 80]] = BOS_ID  # document starts, two of them adjacent
    docs = context_documents(x) if document else None
    p, level, state = cache_probs(x, order, vocab, docs)
    assert p.shape == x.shape and p.dtype == torch.float64
    for t in range(len(x)):
        prefix = x[:t].tolist()
        dist = cache_distribution(prefix, order, vocab, document)
        assert float(dist.sum()) == pytest.approx(1.0, abs=1e-12) and bool((dist > 0).all())
        assert float(p[t]) == pytest.approx(float(dist[x[t]]), abs=1e-13)
        first = max((i + 1 for i, tok in enumerate(prefix) if tok == BOS_ID), default=0) if document else 0
        assert int(level[t]) == highest_seen_order(x.tolist(), t, order, first)
        assert int(state[t]) == context_state(x.tolist(), t, int(level[t]), first)


def test_documents_are_those_of_the_prefix() -> None:
    x = torch.tensor([BOS_ID, 5, 6, BOS_ID, 7, BOS_ID, BOS_ID, 8])
    assert context_documents(x).tolist() == [0, 1, 1, 1, 2, 2, 3, 4]  # a BOS target belongs to the document it ends


def test_repeats_are_predicted_better_with_higher_orders() -> None:
    x = stream(400, 50, 4)
    bits = {k: float(-torch.log2(cache_probs(x, k, 50)[0][300:]).sum()) for k in (0, 1, 4)}
    assert bits[4] < bits[1] < bits[0]  # the last quarter repeats the first: long contexts know what follows


def test_nothing_at_a_position_depends_on_what_follows() -> None:
    x = stream(200, 20, 5)
    x[[0, 60, 120]] = BOS_ID
    nll = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 4
    for cut in (0, 37, 150, 198):
        y, later = x.clone(), nll.clone()
        y[cut + 1:] = (y[cut + 1:] + 7) % 20
        later[cut + 1:] = later[cut + 1:] * 0.5 + 1
        assert torch.equal(cache_probs(x, 5, 20)[0][: cut + 1], cache_probs(y, 5, 20)[0][: cut + 1])
        docs_x, docs_y = context_documents(x), context_documents(y)
        assert torch.equal(docs_x[: cut + 1], docs_y[: cut + 1])
        assert torch.equal(cache_probs(x, 5, 20, docs_x)[0][: cut + 1], cache_probs(y, 5, 20, docs_y)[0][: cut + 1])
        assert torch.equal(mix_scores(nll, x, 5, 20)[: cut + 1], mix_scores(later, y, 5, 20)[: cut + 1])


def test_mixture_is_within_log_grid_of_its_best_fixed_weights_per_bucket() -> None:
    # A Bayesian average over J weight pairs loses at most log J nats against the best of them, per bucket.
    x = stream(600, 30, 6)
    x[[0, 200, 420]] = BOS_ID
    nll = torch.rand(600, generator=torch.Generator().manual_seed(1)) * 3 + 1.0
    mixed = mix_scores(nll, x, 4, 30, decay=1.0)  # the bound of the plain posterior (the shipped one forgets)
    assert mixed[0] == 0 and bool(torch.isfinite(mixed).all())
    p_model, p_stream, p_doc, bucket = mixing_inputs(nll, x, 4, 30)
    assert len(bucket.unique()) > 10  # orders, counts and who won last carve the stream into many buckets
    bound = 0.0
    for b in bucket.unique():
        at = bucket == b
        fixed = [float(-torch.log((1 - u - v) * p_model[at] + u * p_stream[at] + v * p_doc[at]).sum())
                 for u, v in WEIGHT_GRID]
        bound += min(fixed) + math.log(len(WEIGHT_GRID))
    total = float(mixed[1:].double().sum())
    assert total <= bound + 1e-6
    assert total < float(nll[1:].double().sum())  # the repeats are worth something to a weak model


@pytest.mark.parametrize("decay", [1.0, 0.97, 0.5])
def test_forgetting_posterior_is_the_direct_recurrence(decay: float) -> None:
    # per bucket, each candidate's log weight w <- decay * (w + log m_j(t)) after every position of the bucket
    g = torch.Generator().manual_seed(7)
    bucket = torch.randint(0, 3, (900,), generator=g)
    bucket[600:] = 4  # one long bucket: many doubling steps
    cands = [torch.rand(900, generator=g, dtype=torch.float64) + 0.01 for _ in range(3)]
    got = ngram._bayes_average(iter(cands), bucket, decay).tolist()
    weights: dict[int, list[float]] = {}
    for t in range(900):
        w = weights.get(int(bucket[t]), [0.0] * 3)
        top = max(w)
        post = [math.exp(v - top) for v in w]
        want = math.log(sum(p * float(c[t]) for p, c in zip(post, cands)) / sum(post))
        assert got[t] == pytest.approx(want, abs=1e-9), t
        weights[int(bucket[t])] = [decay * (v + math.log(float(c[t]))) for v, c in zip(w, cands)]


def test_a_forgetting_posterior_follows_the_better_candidate_after_a_switch() -> None:
    # candidate 0 predicts the first 500 positions far better, candidate 1 the last 500
    first = torch.cat([torch.full((500,), 0.5), torch.full((500,), 0.05)]).double()
    second = first.flip(0)
    bucket = torch.zeros(1000, dtype=torch.long)
    plain = ngram._bayes_average(iter([first, second]), bucket, 1.0)
    forgetting = ngram._bayes_average(iter([first, second]), bucket, 0.97)
    assert float(forgetting.sum()) > float(plain.sum()) + 100  # in nats: the plain posterior is slow to turn
    late = slice(600, 1000)  # well after the switch the forgetting one is (almost) the better candidate
    assert torch.allclose(forgetting[late], torch.log(second[late]), atol=1e-6)
    assert float(plain[late].sum()) < float(forgetting[late].sum()) - 100
    assert 0 < ngram.CACHE_DECAY < 1 and 0 < ngram.PASS_DECAY < 1  # both shipped mixtures forget


def test_probe_passes_the_cache_and_catches_one_that_peeks(monkeypatch: pytest.MonkeyPatch) -> None:
    honest = probe_cache(6, 64)
    assert honest["cache_causal_ok"] and honest["cache_normalized_ok"]
    real = ngram.cache_probs

    def peeking(tokens: torch.Tensor, order: int, vocab_size: int,
                documents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, level, state = real(tokens, order, vocab_size, documents)
        nxt = torch.cat([tokens[1:], tokens[:1]])  # the token after the target
        return p * (1 + nxt / (4 * vocab_size)), level, state

    monkeypatch.setattr(ngram, "cache_probs", peeking)
    assert not probe_cache(6, 64)["cache_causal_ok"]

    def unnormalised(tokens: torch.Tensor, order: int, vocab_size: int,
                     documents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, level, state = real(tokens, order, vocab_size, documents)
        return (p * 1.5).clamp(max=1.0), level, state

    monkeypatch.setattr(ngram, "cache_probs", unnormalised)
    bad = probe_cache(6, 64)
    assert bad["cache_causal_ok"] and not bad["cache_normalized_ok"]


def test_sliding_evaluation_with_the_cache() -> None:
    tokens = repetitive_stream(700, seed=3)
    where = dict(seq_len=32, stride=16, batch_tokens=256)
    plain = evaluate(tiny_gpt(), tokens, flat_luts(), **where)
    off = evaluate(tiny_gpt(), tokens, flat_luts(), ngram_order=0, **where)
    on = evaluate(tiny_gpt(), tokens, flat_luts(), ngram_order=4, **where)
    assert (off.bpb, off.loss) == (plain.bpb, plain.loss) and off.ledger.ngram_order == 0 and "ngram" not in off.stages
    assert on.ledger.ngram_order == 4 and on.stages["ngram"] >= 0
    assert (on.num_tokens, on.num_bytes) == (plain.num_tokens, plain.num_bytes)
    assert on.bpb < plain.bpb - 0.5  # an untrained model on repeated phrases: the cache knows them


def test_ledger_reports_the_mixture_of_the_committed_scores() -> None:
    tokens = repetitive_stream(500, seed=4)
    ledger = TokenLedger(tokens, flat_luts(), ngram_order=3)
    with eval_mode(model := tiny_gpt()):
        score_rows(model, ledger, window_rows(window_plan(len(tokens), 32, 16)), batch_rows=8)
    model_nll = ledger.token_losses()  # (N,) the model's own losses, before finish mixes them
    totals, report = ledger.finish()
    expected = mix_scores(model_nll, tokens, 3, flat_luts().base_bytes.numel())
    assert float(totals.nll_sum) == pytest.approx(float(expected.double().sum()), rel=1e-12)
    assert torch.equal(ledger.token_losses(), expected) and report.ngram_order == 3
    assert int(totals.token_count) == len(tokens) - 1


@pytest.mark.parametrize("bad", [-1, 33])
def test_order_is_validated(bad: int) -> None:
    with pytest.raises(ConfigError, match="eval.ngram_order"):
        EvalConfig(ngram_order=bad).validate()


def test_mixing_hands_collectives_only_run_device_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # What only a GPU run would show: the all-reduced model losses live on the ledger's device, and the mixing
    # makes no tensor without `device=` (tests/test_devices.py's interception).
    from test_devices import Collectives, DevicelessFactoriesGoToMeta

    tokens = repetitive_stream(300, seed=5)
    plain = evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=256, ngram_order=3)
    model = tiny_gpt()  # built outside: its init makes host tensors and moves them
    seen = Collectives(monkeypatch)
    with DevicelessFactoriesGoToMeta():
        r = evaluate(model, tokens, flat_luts(), seq_len=32, stride=16, batch_tokens=256, ngram_order=3)
    assert r.bpb == plain.bpb and r.ledger.ngram_order == 3
    assert [name for name, _ in seen.seen].count("all_reduce") >= 4  # coverage, releases, the losses, the totals
    assert all(device == torch.device("cpu") for _, device in seen.seen), seen.seen
