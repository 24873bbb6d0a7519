"""Causal n-gram caches of the validation tokens, mixed into the model's scores (`eval.ngram_order`).

At position t two caches predict the next token from counts over the tokens before t only: one over
the whole stream so far, one over the current document so far (the tokens since its BOS). Each is an
interpolated absolute-discounting model of orders 0..K (order k's context is the k tokens before the
target; `DISCOUNTS`), backed off to the uniform distribution over the vocabulary, so for every prefix
each is a distribution over the whole vocabulary that sums to one. The scored probability is a mixture
p(x_t) = (1 - a - b) p_model(x_t) + a p_stream(x_t) + b p_document(x_t), itself a Bayesian average over
a fixed grid of (a, b): each pair is weighted by how well it predicted the earlier positions in t's
bucket, the recent ones counting more (`CACHE_DECAY`: a posterior that forgets). The bucket describes
the state before t: the highest matched order in each cache, how often the stream cache's context
occurred (6 bins), whether each cache's context was always followed by the same token, and whether at
t-1 a cache gave the scored token more probability than the model. Every ingredient of the score at t
(the counts, the bucket, the weights) is a function of the tokens before t and of the model's scores
before t, so the mixture is a causal, normalised predictor that uses each token only after it is
scored: the single left-to-right pass of parameter-golf issue #1017, computed at once with sorts and
cumulative sums instead of a Python loop.

Counting is exact (contexts are numbered by `torch.unique`, never hashed): nothing is keyed on the
target, the pattern the challenge ruled out for hashed caches.

The same Bayesian averaging mixes a TTT-adapted model with other passes over the stream, the artifact's
model before adaptation (`eval.mix_unadapted`) and a second LoRA pass of another rank or learning rate
(`ttt.lora_mix_lr`), one posterior per bin of the position in the document and pass that predicted the
previous token best, before the caches (`mix_passes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch

from pgolf.tokenizer import BOS_ID

# The (stream, document) cache weights the mixture averages over, with a uniform prior ((0, 0): the model alone).
_STEPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
WEIGHT_GRID = tuple((a, b) for a in _STEPS for b in _STEPS if a + b <= 0.95)

# How fast the posteriors forget, per earlier position of the same bucket (`_bayes_average`): the caches'
# mixture and the passes'. Chosen on text from the training shard (docs/LOG.md, 2026-11-27), not on validation.
CACHE_DECAY = 0.995
PASS_DECAY = 0.997


def _groups(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ids (M,) in stream order: how often each id occurred before (M,), the stable sort order and,
    in sorted order, the index where each element's group starts."""
    s, order = torch.sort(ids, stable=True)
    idx = torch.arange(ids.numel(), device=ids.device)
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]
    start = torch.cummax(torch.where(new, idx, 0), 0).values
    earlier = torch.empty_like(ids)
    earlier[order] = idx - start
    return earlier, order, start


def _sum_before(values: torch.Tensor, order: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Per element of values (M, ...): the sum of the values of its group's earlier elements."""
    v = values[order]
    c = torch.cumsum(v, 0) - v
    c = c - c[start]
    out = torch.empty_like(c)
    out[order] = c
    return out


def _decayed_sum_before(values: torch.Tensor, order: torch.Tensor, start: torch.Tensor, decay: float) -> torch.Tensor:
    """Per element of values (M,): sum over its group's earlier elements of decay^d x value, d = how many
    elements of the group apart they are (the one just before: d = 1). The recurrence x_i = decay (x_{i-1} +
    v_{i-1}) along each group, as a doubling scan (log2 of the largest group's size steps, each O(M)), which
    only ever multiplies by powers of decay <= 1."""
    v = values[order]
    rank = torch.arange(v.numel(), device=v.device) - start  # place within the group, in sorted order
    x = torch.zeros_like(v)
    x[1:] = decay * v[:-1]
    x = torch.where(rank > 0, x, 0.0)
    span, factor, largest = 1, decay, int(rank.max()) if v.numel() else 0
    while span <= largest:
        reach = torch.zeros_like(x)
        reach[span:] = factor * x[:-span]
        x = x + torch.where(rank >= span, reach, 0.0)
        span, factor = 2 * span, factor * factor
    out = torch.empty_like(x)
    out[order] = x
    return out


def context_documents(tokens: torch.Tensor) -> torch.Tensor:
    """(N,) int64: the document each prediction is made in, the number of BOS tokens before position t
    (a function of the prefix, never of the target: a BOS target is predicted in the document it ends)."""
    bos = (tokens == BOS_ID).long()
    return torch.cumsum(bos, 0) - bos


COUNT_BINS = (1, 2, 4, 8, 16)  # bins of a context's earlier occurrences: <=1, 2, 3-4, 5-8, 9-16, >16

# The absolute discount of orders 0-2 and of orders 3..K: each seen follower gives up D of its count to the
# lower order. Chosen on text from the training shard (docs/LOG.md, 2026-11-27), not on the validation text.
DISCOUNTS = (0.15, 0.7)
DISCOUNT_SPLIT = 3


def discount(k: int) -> float:
    """The absolute discount of order k."""
    return DISCOUNTS[k >= DISCOUNT_SPLIT]


def cache_probs(tokens: torch.Tensor, order: int, vocab_size: int,
                documents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache's probability of each token given the tokens before it, (N,) float64 (position 0: the
    uniform 1/V); the highest order whose context occurred before, (N,) int64; and that context's state,
    (N,) int64: 2 x the bin (`COUNT_BINS`) of its earlier occurrences + 1 if one token alone followed it.
    With `documents` (`context_documents`) only earlier positions of the same document count."""
    x = tokens.long()
    n = x.numel()
    p = torch.full((n,), 1.0 / vocab_size, dtype=torch.float64, device=x.device)
    level = torch.zeros(n, dtype=torch.long, device=x.device)
    state = torch.zeros(n, dtype=torch.long, device=x.device)
    bins = torch.tensor(COUNT_BINS, dtype=torch.long, device=x.device)
    # context number of order k at each position >= k (order 0: the document, or one context for the stream)
    ctx = torch.zeros(n, dtype=torch.long, device=x.device) if documents is None else documents.long().clone()
    for k in range(min(order, n - 1) + 1):
        if k:  # order k's context at t: the token at t-k before order k-1's context at t
            ctx = torch.cat([ctx[:k], torch.unique(ctx[k:] * vocab_size + x[: n - k], return_inverse=True)[1]])
        h, w = ctx[k:], x[k:]
        seen_pair = _groups(h * vocab_size + w)[0]
        seen, srt, start = _groups(h)
        types = _sum_before((seen_pair == 0).long(), srt, start)  # distinct next tokens after this context so far
        lower, d = p[k:], discount(k)
        # (c(h, w) - d [c(h, w) > 0] + d T(h) p_{k-1}(w)) / c(h): d < 1 <= every seen count, so no clamp
        kept = seen_pair - d * (seen_pair > 0).double()
        p[k:] = torch.where(seen > 0, (kept + d * types.double() * lower) / seen.clamp(min=1), lower)
        level[k:] = torch.where(seen > 0, k, level[k:])
        state[k:] = torch.where(seen > 0, 2 * torch.bucketize(seen, bins) + (types == 1).long(), state[k:])
    return p, level, state


def mixing_inputs(nll: torch.Tensor, tokens: torch.Tensor, order: int,
                  vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the predictions 1..N-1: the model's, the stream cache's and the document cache's probability of
    the scored token (float64), and the bucket (int64) whose earlier positions set the mixture's weights."""
    p_stream, lv_stream, st_stream = cache_probs(tokens, order, vocab_size)
    p_doc, lv_doc, st_doc = cache_probs(tokens, order, vocab_size, context_documents(tokens))
    p_model = torch.exp(-nll[1:].double())  # (N-1,)
    p_stream, p_doc = p_stream[1:], p_doc[1:]
    cache_won = torch.zeros_like(lv_stream[1:])  # at the previous prediction, a cache beat the model
    cache_won[1:] = (torch.maximum(p_stream[:-1], p_doc[:-1]) > p_model[:-1]).long()
    pair = lv_stream[1:] * (order + 1) + lv_doc[1:]
    bucket = ((pair * 2 * (len(COUNT_BINS) + 1) + st_stream[1:]) * 2 + st_doc[1:] % 2) * 2 + cache_won
    return p_model, p_stream, p_doc, bucket


def mix_scores(nll: torch.Tensor, tokens: torch.Tensor, order: int, vocab_size: int,
               decay: float | None = None) -> torch.Tensor:
    """The mixed loss of every prediction: nll (N,) holds the model's loss of token t at index t (index 0
    unused); returns (N,) float32 with index 0 zero. `decay`: the posterior's (`CACHE_DECAY` unless given)."""
    p_model, p_stream, p_doc, bucket = mixing_inputs(nll, tokens, order, vocab_size)
    mixed = _bayes_average(((1 - a - b) * p_model + a * p_stream + b * p_doc for a, b in WEIGHT_GRID), bucket,
                           CACHE_DECAY if decay is None else decay)
    out = torch.zeros_like(nll, dtype=torch.float32)
    out[1:] = (-mixed).float()
    return out


# The weights of each other pass in `mix_passes` (the unadapted model, a second LoRA pass), and the bins of a
# prediction's place in its document (tokens since its BOS) that keep one posterior each: TTT adapts as a
# document goes on.
UNADAPTED_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DOC_POSITION_BINS = (64, 256, 1024, 4096)


def document_positions(tokens: torch.Tensor) -> torch.Tensor:
    """(N,) int64: for prediction t, how many tokens of its document precede it (t minus the last BOS before
    t; t itself when there is none): a function of the prefix."""
    idx = torch.arange(tokens.numel(), device=tokens.device)
    last_bos = torch.cummax(torch.where(tokens == BOS_ID, idx, 0), 0).values
    pos = idx.clone()
    pos[1:] = idx[1:] - last_bos[:-1]
    return pos


def pass_buckets(nll: torch.Tensor, others: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """(N-1,) int64: the bucket of predictions 1..N-1 in `mix_passes`, the bin of the position in the document
    times which pass (0 = the adapted one, i = others[i-1]) gave the previous prediction the lowest loss (the
    first on a tie; 0 at the first prediction): both known before the target."""
    pos_bin = torch.bucketize(document_positions(tokens)[1:], torch.tensor(DOC_POSITION_BINS, device=tokens.device))
    won = torch.zeros_like(pos_bin)
    won[1:] = torch.stack([nll[1:-1], *(o[1:-1] for o in others)]).argmin(0)
    return pos_bin * (len(others) + 1) + won


def mix_passes(nll: torch.Tensor, others: Sequence[torch.Tensor], tokens: torch.Tensor,
               decay: float | None = None) -> torch.Tensor:
    """The loss of every prediction under a mixture of the adapted model (nll, (N,), index t = token t) and
    other passes over the same stream (each (N,), same layout: the artifact's model before any adaptation,
    a second TTT pass): (1 - sum w_i) p_adapted + sum w_i p_i with each w_i from `UNADAPTED_GRID` (the
    combinations summing to at most 1), a Bayesian average with one posterior per bucket (`pass_buckets`: the
    bin of the position in the document and which pass won the previous prediction), from the earlier
    predictions of that bucket only (`decay`: the posterior's, `PASS_DECAY` unless given). Returns (N,) float32,
    index 0 zero."""
    p_a = torch.exp(-nll[1:].double())
    p = [torch.exp(-o[1:].double()) for o in others]
    bucket = pass_buckets(nll, others, tokens)
    grid = [ws for ws in itertools.product(UNADAPTED_GRID, repeat=len(p)) if sum(ws) <= 1 + 1e-9]
    candidates = (max(0.0, 1 - sum(ws)) * p_a + sum(w * q for w, q in zip(ws, p)) for ws in grid)  # no -1e-16 weight
    out = torch.zeros_like(nll, dtype=torch.float32)
    out[1:] = (-_bayes_average(candidates, bucket, PASS_DECAY if decay is None else decay)).float()
    return out


def _bayes_average(mixtures: Iterable[torch.Tensor], bucket: torch.Tensor, decay: float = 1.0) -> torch.Tensor:
    """log sum_j post_j m_j for candidate predictions m_j (each (M,)), post_j from the earlier positions of each
    position's bucket (a uniform prior), each earlier position's likelihood raised to decay^d, d = how many
    positions of the bucket ago it was (decay 1: the plain posterior; < 1: recent positions count more, so
    the weights follow a stream whose best mixture drifts). One candidate at a time, so memory stays O(M)."""
    _, srt, start = _groups(bucket)
    num = den = None
    for m in mixtures:
        log_mix = torch.log(m)
        past = _sum_before(log_mix, srt, start) if decay == 1.0 else _decayed_sum_before(log_mix, srt, start, decay)
        num = past + log_mix if num is None else torch.logaddexp(num, past + log_mix)
        den = past if den is None else torch.logaddexp(den, past)
    return num - den


def cache_distribution(prefix: list[int], order: int, vocab_size: int, document: bool = False) -> torch.Tensor:
    """The cache's whole next-token distribution after `prefix`, (V,) float64, counted directly from the
    prefix (with `document`, from positions after its last BOS only): the independent check of
    `cache_probs` (it must agree at the token that follows, and sum to one)."""
    p = torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64)
    n = len(prefix)
    first = max((i for i, tok in enumerate(prefix) if tok == BOS_ID), default=-1) + 1 if document else 0
    for k in range(min(order, n) + 1):
        context = prefix[n - k:]
        follow = [prefix[s] for s in range(max(k, first), n) if prefix[s - k: s] == context]
        if follow:
            counts = torch.bincount(torch.tensor(follow), minlength=vocab_size).double()
            d, types = discount(k), float((counts > 0).sum())
            p = (counts - d * (counts > 0).double() + d * types * p) / len(follow)
    return p


def probe_cache(order: int, vocab_size: int, seed: int = 0) -> dict[str, float | bool]:
    """Causality and normalisation of both caches on a random stream with repeats and document starts
    (never validation data): probabilities up to a position do not move when later tokens change, and at
    a few positions the whole distribution, counted directly, sums to one and gives the probability
    `cache_probs` scored."""
    g = torch.Generator().manual_seed(seed)
    piece = torch.randint(0, vocab_size, (40,), generator=g)
    x = torch.cat([piece, torch.randint(0, vocab_size, (20,), generator=g), piece, piece[:30]])  # (130,)
    x[[0, 50, 100]] = BOS_ID if vocab_size > BOS_ID else 0
    cut = 70
    y = x.clone()
    y[cut + 1:] = torch.randint(0, vocab_size, (x.numel() - cut - 1,), generator=g)
    causal, sums, agree = 0.0, [], []
    for document in (False, True):
        docs = (lambda z: context_documents(z)) if document else (lambda z: None)
        p = cache_probs(x, order, vocab_size, docs(x))[0]
        q = cache_probs(y, order, vocab_size, docs(y))[0]
        causal = max(causal, float((p[: cut + 1] - q[: cut + 1]).abs().max()))
        for t in (1, 45, 50, 75, x.numel() - 1):
            dist = cache_distribution(x[:t].tolist(), order, vocab_size, document)
            sums.append(abs(float(dist.sum()) - 1.0))
            agree.append(abs(float(dist[x[t]]) - float(p[t])))
    return {"cache_earlier_max_abs_change": causal, "cache_sum_max_abs_error": max(sums),
            "cache_vs_direct_max_abs_diff": max(agree), "cache_causal_ok": causal == 0.0,
            "cache_normalized_ok": max(sums) <= 1e-9 and max(agree) <= 1e-12}
