"""Evaluators over the flat validation stream: sliding windows and the baseline's plain one.

Sliding-window evaluation (parameter-golf record 2026-03-19_SlidingWindowEval) runs full-length
windows every `stride` tokens and scores only each window's last `stride` predictions, so every
scored token sees at least seq_len - stride tokens of context. The plan here scores each prediction
exactly once; the record's original window filter scored the stream's tail twice (fixed in the
2026-04-01 record, whose geometry this follows). `evaluate_standard` is the baseline's
non-overlapping evaluation, written independently, against which stride == seq_len is checked.

The model is any module with `per_token_nll(input_ids (B, T), target_ids (B, T)) -> (B, T)` nats.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby

import torch
from torch import nn
from tqdm import tqdm

from pgolf.dist import all_reduce_sum_
from pgolf.errors import UserError
from pgolf.eval.bpb import BpbTotals, bits_per_byte
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
    """One evaluation: mean nll (nats/token), val_bpb, what was scored, and wall time."""

    loss: float
    bpb: float
    num_tokens: int
    num_bytes: int
    seconds: float


def _batches(windows: list[Window], batch_windows: int) -> Iterator[list[Window]]:
    """Consecutive runs of equal-length windows, at most batch_windows per batch."""
    for _, run in groupby(windows, key=lambda w: w[1]):
        run = list(run)
        for i in range(0, len(run), batch_windows):
            yield run[i: i + batch_windows]


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def score_windows(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, windows: list[Window], *,
                  batch_windows: int, device: torch.device | str = "cpu", autocast_bf16: bool = False,
                  progress: bool = False) -> BpbTotals:
    """This process's unreduced totals over `windows` (call under inference mode, model in eval)."""
    device = torch.device(device)
    stream = tokens.to(device=device, dtype=torch.long)  # (N,)
    luts = luts.to(device)
    totals = BpbTotals.zeros(device)
    bar = _progress_bar(len(windows)) if progress else None
    for batch in _batches(windows, max(1, batch_windows)):
        wlen = batch[0][1]
        starts = torch.tensor([w[0] for w in batch], device=device)  # (B,)
        score_from = torch.tensor([w[2] for w in batch], device=device)  # (B,)
        pos = torch.arange(wlen, device=device)  # (T,)
        x = stream[starts[:, None] + pos]  # (B, T)
        y = stream[starts[:, None] + pos + 1]  # (B, T)
        with _autocast(device, autocast_bf16):
            nll = model.per_token_nll(x, y).float()  # (B, T)
        scored = pos[None, :] >= score_from[:, None]  # (B, T)
        totals.add(nll, x, y, luts, mask=scored)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return totals


def _progress_bar(total: int) -> tqdm:
    # A bar only on a terminal: redirected output (logs, CI) stays one line per event.
    return tqdm(total=total, desc="eval", unit="win", leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def _rank_share(items: list[Window], rank: int, world_size: int) -> list[Window]:
    """Contiguous block `rank` of `world_size` near-equal blocks."""
    n = len(items)
    return items[n * rank // world_size: n * (rank + 1) // world_size]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the caller's training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _result(nll_sum: float, num_tokens: float, num_bytes: float, t0: float) -> EvalResult:
    """Read the totals first (waiting for the device), then the clock."""
    return EvalResult(loss=nll_sum / num_tokens, bpb=bits_per_byte(nll_sum, num_bytes), num_tokens=int(num_tokens),
                      num_bytes=int(num_bytes), seconds=time.perf_counter() - t0)


def evaluate(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, stride: int,
             batch_tokens: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
             autocast_bf16: bool = False, progress: bool = False) -> EvalResult:
    """Sliding-window val_bpb over the whole stream, windows split across ranks, summed over ranks.

    `batch_tokens` counts tokens per forward summed over ranks, as eval.batch_tokens does.
    """
    t0 = time.perf_counter()
    windows = _rank_share(window_plan(tokens.numel(), seq_len, stride), rank, world_size)
    with _eval_mode(model):
        totals = score_windows(model, tokens, luts, windows, batch_windows=batch_tokens // (world_size * seq_len),
                               device=device, autocast_bf16=autocast_bf16, progress=progress and rank == 0)
        totals.all_reduce()
    return _result(float(totals.nll_sum), float(totals.token_count), float(totals.byte_count), t0)


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
    with _eval_mode(model):
        for i in range(first, last, per_batch):
            x, y = inputs[i: min(i + per_batch, last)], targets[i: min(i + per_batch, last)]  # (B, T)
            with _autocast(device, autocast_bf16):
                nll = model.per_token_nll(x, y).float()  # (B, T)
            num_bytes = base[y].double() + (space[y] & ~boundary[x]).double()  # (B, T)
            sums[0] += nll.double().sum()
            sums[1] += y.numel()
            sums[2] += num_bytes.sum()
        all_reduce_sum_(sums)
    return _result(*sums.tolist(), t0)
