"""Evaluators over the flat validation stream: sliding windows through the token ledger, and the baseline's plain one.

Sliding-window evaluation (parameter-golf record 2026-03-19_SlidingWindowEval) runs full-length
windows every `stride` tokens and scores only each window's last `stride` predictions, so every
scored token sees at least seq_len - stride tokens of context. The plan here scores each prediction
exactly once; the record's original window filter scored the stream's tail twice (fixed in the
2026-04-01 record, whose geometry this follows). `evaluate_standard` is the baseline's
non-overlapping evaluation, written independently, against which stride == seq_len is checked.

The model is any module with `per_token_nll(input_ids (B, T), target_ids (B, T)) -> (B, T)` nats;
one that also has `hidden_states(x, keep_from)`/`logits_from_hidden` runs its last layer and head only
for the scored columns.
Windows are ledger rows (`pgolf.eval.bpb.TokenLedger`): the scorer reads them from the ledger and
commits each window's losses, so every prediction is provably scored once. Evaluation works at any
window length; RoPE models trained shorter may want the model's NTK rescale (model.rope_train_seq_len).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pgolf.dist import all_reduce_sum_
from pgolf.errors import UserError
from pgolf.eval.bpb import BpbTotals, LedgerReport, TokenLedger, bits_per_byte
from pgolf.tokenizer import ByteLuts

Window = tuple[int, int, int]  # (window_start, window_len, score_from)


def truncate_for_eval(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The challenge's rule: keep ((N-1)//seq_len)*seq_len + 1 tokens (whole sequences of predictions)."""
    n = tokens.numel()
    if n < seq_len + 1:
        raise UserError(f"validation set has {n} tokens, fewer than eval seq_len+1 = {seq_len + 1}; "
                        "lower --eval.seq_len")
    return tokens[: (n - 1) // seq_len * seq_len + 1]


def window_plan(total_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """Windows over a stream of `total_tokens` tokens that score predictions 1..total_tokens-1 once each.

    A window (ws, wlen, s) feeds tokens ws..ws+wlen-1 and scores the predictions of tokens
    ws+s+1..ws+wlen. Windows start every `stride` tokens; after the first, each scores from
    seq_len - stride, and only windows whose scored part is not yet covered are kept, the last
    one shortened to end at the stream's end.
    """
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride={stride} must be in 1..seq_len={seq_len}")
    num_preds = total_tokens - 1
    context = seq_len - stride
    plan = []
    for ws in range(0, max(num_preds, 0), stride):
        if ws > 0 and ws + context >= num_preds:
            break  # everything this window would score is already scored
        wlen = min(seq_len, num_preds - ws)
        plan.append((ws, wlen, 0 if ws == 0 else context))
    return plan


@dataclass
class EvalResult:
    """One evaluation: mean nll (nats/token), val_bpb, what was scored, wall time, and the ledger's counts."""

    loss: float
    bpb: float
    num_tokens: int
    num_bytes: int
    seconds: float
    ledger: LedgerReport | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per part (score, adapt) where measured
    unadapted: EvalResult | None = None  # eval.mix_unadapted: the unadapted pass's own score (a fixed predictor)
    lora_mix: EvalResult | None = None  # ttt.lora_mix_lr: the second LoRA pass's own score


def window_rows(windows: list[Window]) -> np.ndarray:
    """Windows as ledger rows (base, lo, hi) = (window_start, score_from, window_len); (W, 3) int64."""
    return np.asarray([(ws, s, wlen) for ws, wlen, s in windows], dtype=np.int64).reshape(-1, 3)


def rank_share(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """Contiguous block `rank` of `world_size` near-equal blocks."""
    n = len(items)
    return items[n * rank // world_size: n * (rank + 1) // world_size]


def _batch_slices(widths: np.ndarray, batch_rows: int) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive runs of equal width, at most batch_rows long."""
    i, n = 0, len(widths)
    while i < n:
        j = i + 1
        while j < n and j - i < batch_rows and widths[j] == widths[i]:
            j += 1
        yield i, j
        i = j


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def token_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, col0: int = 0) -> torch.Tensor:
    """Per-token nll (B, T - col0) of the predictions from column col0 on: full-vocabulary softmax
    cross-entropy. Models with `hidden_states`/`logits_from_hidden` run the last layer and head only where scored."""
    if col0 == 0 or not hasattr(model, "logits_from_hidden"):
        return model.per_token_nll(x, y)[:, col0:].float()
    logits = model.logits_from_hidden(model.hidden_states(x, keep_from=col0))  # (B, T', V)
    return F.cross_entropy(logits.float().flatten(0, 1), y[:, col0:].flatten(), reduction="none").view(y.shape[0], -1)


def _batch_keys(rows: np.ndarray, batch_rows: int) -> Iterator[tuple[int, int, tuple[int, int, int]]]:
    """(start, end, (rows, width, first scored column)) of each batch `score_rows` runs."""
    for i0, i1 in _batch_slices(rows[:, 2], max(1, batch_rows)):
        yield i0, i1, (i1 - i0, int(rows[i0, 2]), int(rows[i0:i1, 1].min()))


class SteadyCompiled:
    """`token_nll` through torch.compile (static shapes) for the evaluation's most common batch, every other
    batch eager: one compilation per evaluation, none for the first window or the last, shorter batches.
    The first batch of the steady shape also runs eager: it settles the model's lazy state (RoPE tables grown
    inside a compiled call come back as inference tensors and force a second compilation). The first
    compiled call's seconds (compilation and one forward) are kept in `compile_seconds`."""

    def __init__(self, model: nn.Module, key: tuple[int, int, int], backend: Any) -> None:
        self.model, self.key, self.compile_seconds = model, key, 0.0
        col0 = key[2]
        self.fn: Callable[..., torch.Tensor] = torch.compile(lambda x, y: token_nll(model, x, y, col0),
                                                             dynamic=False, backend=backend)
        self.calls = 0  # steady-shape batches so far

    def __call__(self, x: torch.Tensor, y: torch.Tensor, col0: int) -> torch.Tensor:
        steady = (x.shape[0], x.shape[1], col0) == self.key
        self.calls += steady
        if not steady or self.calls == 1:  # other shapes, and the first steady batch, run eager
            return token_nll(self.model, x, y, col0)
        if self.calls > 2:
            return self.fn(x, y)
        t0 = time.perf_counter()
        out = self.fn(x, y)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.compile_seconds = time.perf_counter() - t0
        return out


def score_rows(model: nn.Module, ledger: TokenLedger, rows: np.ndarray, *, batch_rows: int,
               autocast_bf16: bool = False, progress: bool = False, compile_backend: Any = None) -> float:
    """Score ledger rows in batches of equal width and commit them (call under inference mode, model in eval);
    with `compile_backend` the most common batch shape runs compiled (`SteadyCompiled`). Returns the seconds
    of the first compiled call (0.0 when nothing compiled).

    The rows go to the device once; a batch then needs no host-device synchronisation."""
    if len(rows) == 0:
        return 0.0
    batches = list(_batch_keys(rows, batch_rows))
    nll_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = lambda x, y, c: token_nll(model, x, y, c)
    if compile_backend is not None:
        nll_fn = SteadyCompiled(model, Counter(key for _, _, key in batches).most_common(1)[0][0], compile_backend)
    rows_dev = torch.from_numpy(rows).to(ledger.device)  # (R, 3)
    bar = progress_bar(len(rows), "eval", "win") if progress else None
    for i0, i1, (_, width, col0) in batches:
        batch, batch_dev = rows[i0:i1], rows_dev[i0:i1]
        x, y = ledger.window_batch(batch_dev, width)  # (B, T) each
        with _autocast(ledger.device, autocast_bf16):
            nll = nll_fn(x, y, col0)  # (B, T - col0)
        ledger.commit(batch, nll, batch_dev, col0=col0)
        if bar is not None:
            bar.update(i1 - i0)
    if bar is not None:
        bar.close()
    return nll_fn.compile_seconds if isinstance(nll_fn, SteadyCompiled) else 0.0


def progress_bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar only on a terminal: redirected output (logs, CI) stays one line per event."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())


@contextlib.contextmanager
def eval_mode(model: nn.Module, inference: bool = True) -> Iterator[None]:
    """Eval mode (and no autograd unless `inference` is False) for the duration; training mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode() if inference else contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)


def result_from(totals: BpbTotals, report: LedgerReport | None, t0: float) -> EvalResult:
    """Read the totals first (waiting for the device), then the clock."""
    nll_sum, num_tokens, num_bytes = float(totals.nll_sum), float(totals.token_count), float(totals.byte_count)
    stages = {}
    if report is not None and (report.ngram_order or report.unadapted):
        stages["ngram" if report.ngram_order else "mix"] = report.ngram_seconds
    return EvalResult(loss=nll_sum / num_tokens, bpb=bits_per_byte(nll_sum, num_bytes), num_tokens=int(num_tokens),
                      num_bytes=int(num_bytes), seconds=time.perf_counter() - t0, ledger=report, stages=stages)


def evaluate(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, stride: int,
             batch_tokens: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
             autocast_bf16: bool = False, progress: bool = False, compile_backend: Any = None,
             ngram_order: int = 0) -> EvalResult:
    """Sliding-window val_bpb over the whole stream through a ledger, windows split across ranks.

    `batch_tokens` counts tokens per forward summed over ranks, as eval.batch_tokens does. Every rank
    of a `world_size` process group must call it (the totals and the coverage check are collectives).
    With `compile_backend` (eval.compile) the steady batch shape runs compiled; the first compiled call's
    seconds are reported as the `compile` part of the result's stages.
    """
    t0 = time.perf_counter()
    ledger = TokenLedger(tokens, luts, device, ngram_order)
    rows = window_rows(rank_share(window_plan(tokens.numel(), seq_len, stride), rank, world_size))
    with eval_mode(model):
        compile_seconds = score_rows(model, ledger, rows, batch_rows=batch_tokens // (world_size * seq_len),
                                     autocast_bf16=autocast_bf16, progress=progress and rank == 0,
                                     compile_backend=compile_backend)
    totals, report = ledger.finish()
    result = result_from(totals, report, t0)
    if compile_backend is not None:
        result.stages["compile"] = compile_seconds
    return result


def unadapted_losses(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, stride: int,
                     batch_tokens: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                     autocast_bf16: bool = False,
                     compile_backend: Any = None) -> tuple[torch.Tensor, EvalResult]:
    """Every prediction's loss under the model as it is, by sliding windows (the pass `eval.mix_unadapted`
    runs before any adaptation), on every rank: (N,) float32, index t = token t; and that pass's own
    result, the model's score as a fixed predictor (collective)."""
    t0 = time.perf_counter()
    ledger = TokenLedger(tokens, luts, device)
    rows = window_rows(rank_share(window_plan(tokens.numel(), seq_len, stride), rank, world_size))
    with eval_mode(model):
        score_rows(model, ledger, rows, batch_rows=batch_tokens // (world_size * seq_len),
                   autocast_bf16=autocast_bf16, compile_backend=compile_backend)
    totals, report = ledger.finish()  # every prediction scored exactly once
    return ledger.scored_losses(), result_from(totals, report, t0)


def evaluate_standard(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, batch_tokens: int,
                      rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                      autocast_bf16: bool = False) -> EvalResult:
    """The baseline's evaluation: the stream cut into non-overlapping seq_len sequences, split by rank."""
    t0 = time.perf_counter()
    device = torch.device(device)
    num_seqs = (tokens.numel() - 1) // seq_len
    stream = tokens[: num_seqs * seq_len + 1].to(device=device, dtype=torch.long)  # (num_seqs*T + 1,)
    inputs = stream[:-1].view(num_seqs, seq_len)  # (S, T)
    targets = stream[1:].view(num_seqs, seq_len)  # (S, T)
    first, last = num_seqs * rank // world_size, num_seqs * (rank + 1) // world_size
    per_batch = max(1, batch_tokens // (world_size * seq_len))
    base, space, boundary = luts.base_bytes.to(device), luts.has_leading_space.to(device), luts.is_boundary.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll nats, tokens, bytes
    with eval_mode(model):
        for i in range(first, last, per_batch):
            x, y = inputs[i: min(i + per_batch, last)], targets[i: min(i + per_batch, last)]  # (B, T)
            with _autocast(device, autocast_bf16):
                nll = model.per_token_nll(x, y).float()  # (B, T)
            num_bytes = base[y].double() + (space[y] & ~boundary[x]).double()  # (B, T)
            sums[0] += nll.double().sum()
            sums[1] += y.numel()
            sums[2] += num_bytes.sum()
        all_reduce_sum_(sums)
    nll_sum, num_tokens, num_bytes = sums.tolist()
    return EvalResult(loss=nll_sum / num_tokens, bpb=bits_per_byte(nll_sum, num_bytes), num_tokens=int(num_tokens),
                      num_bytes=int(num_bytes), seconds=time.perf_counter() - t0)
