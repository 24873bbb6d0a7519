"""Score-first chunked test-time training (parameter-golf 2026-03-23 LegalTTT, PRs #461/#549; 2026-04-09).

The validation stream is cut into chunks of `ttt.chunk_tokens` predictions; a sliding window belongs
to the chunk holding its first scored prediction. For each chunk in order: score its windows and
commit them to the ledger, then (except after the last chunk) train the whole model on that chunk:
SGD with momentum, the learning rate on a cosine over chunks, `ttt.epochs` passes, gradient clipping,
gradients summed over ranks. The adapter receives the chunk's tokens only from
`AdaptationView.release`, which refuses any span with an unscored prediction, so a token is always
scored by the model as it was before any step that used it.

The model is changed in place: pass the model rebuilt from the artifact, never the trained one
(adapting before quantisation was ruled out, parameter-golf PR #1376).
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import torch
from torch import nn

from pgolf.dist import all_reduce_sum_
from pgolf.eval.bpb import AdaptationView, TokenLedger
from pgolf.eval.sliding import (EvalResult, Window, eval_mode, progress_bar, rank_share, result_from, score_rows,
                                window_plan, window_rows)
from pgolf.tokenizer import ByteLuts


def chunk_plan(windows: list[Window], chunk_tokens: int, total_tokens: int) -> list[list[Window]]:
    """Windows grouped by the chunk of their first scored prediction; predictions 1..C are chunk 0,
    C+1..2C chunk 1, and so on (some chunks may hold no window when stride > chunk_tokens)."""
    num_chunks = max(1, math.ceil((total_tokens - 1) / chunk_tokens))
    chunks: list[list[Window]] = [[] for _ in range(num_chunks)]
    for ws, wlen, s in windows:
        chunks[(ws + s) // chunk_tokens].append((ws, wlen, s))
    return chunks


def chunk_span(chunk: int, chunk_tokens: int, total_tokens: int) -> tuple[int, int]:
    """Tokens lo..hi-1 of a chunk for training: its predictions lo+1..hi-1 and the token before them."""
    return chunk * chunk_tokens, min((chunk + 1) * chunk_tokens + 1, total_tokens)


def cosine_lr(base_lr: float, chunk: int, num_chunks: int) -> float:
    """lr * (1 + cos(pi * chunk / (num_chunks - 1))) / 2, as the records anneal over chunks."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * chunk / max(num_chunks - 1, 1)))


class ChunkAdapter(Protocol):
    """Anything that adapts the model after a chunk is scored; it sees tokens only through the view."""

    def adapt(self, view: AdaptationView, lo: int, hi: int, chunk: int, num_chunks: int) -> None: ...


class SGDChunkAdapter:
    """Full-model SGD on each scored chunk: sequences of seq_len, a global batch of `batch_seqs`
    sequences split across ranks, the loss normalised by the global token count so gradients summed
    over ranks equal one process's."""

    def __init__(self, model: nn.Module, *, lr: float, momentum: float, epochs: int, batch_seqs: int,
                 grad_clip: float, seq_len: int, autocast_bf16: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        self.model, self.seq_len, self.epochs, self.batch_seqs = model, seq_len, epochs, batch_seqs
        self.lr, self.grad_clip, self.autocast_bf16 = lr, grad_clip, autocast_bf16
        self.rank, self.world_size = rank, world_size
        self.params = [p for p in model.parameters()]
        for p in self.params:
            p.requires_grad_(True)  # all blocks unfrozen, as the records
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum)

    def adapt(self, view: AdaptationView, lo: int, hi: int, chunk: int, num_chunks: int) -> None:
        if self.epochs == 0:
            return
        tokens = view.release(lo, hi)  # (m+1,)
        num_seqs = (tokens.numel() - 1) // self.seq_len
        if num_seqs == 0:
            return
        x = tokens[: num_seqs * self.seq_len].view(num_seqs, self.seq_len)  # (S, T)
        y = tokens[1: num_seqs * self.seq_len + 1].view(num_seqs, self.seq_len)  # (S, T)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(self.lr, chunk, num_chunks)
        with eval_mode(self.model, inference=False), torch.enable_grad():
            for _ in range(self.epochs):
                for i in range(0, num_seqs, self.batch_seqs):
                    self._step(x, y, i, min(i + self.batch_seqs, num_seqs))

    def _step(self, x: torch.Tensor, y: torch.Tensor, first: int, last: int) -> None:
        mine = rank_share(list(range(first, last)), self.rank, self.world_size)
        self.opt.zero_grad(set_to_none=False)
        if mine:
            xs, ys = x[mine[0]: mine[-1] + 1], y[mine[0]: mine[-1] + 1]  # (b, T) each
            dtype = torch.bfloat16 if self.autocast_bf16 else torch.float32
            with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=self.autocast_bf16):
                loss = self.model(xs, ys) * (len(mine) / (last - first))  # mean over the global batch's tokens
            loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = all_reduce_sum_(torch.cat([g.flatten() for g in grads]))  # one collective per step
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(p)
            offset += g.numel()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_chunked(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, stride: int,
                     batch_tokens: int, chunk_tokens: int, adapter: ChunkAdapter, rank: int = 0,
                     world_size: int = 1, device: torch.device | str = "cpu", autocast_bf16: bool = False,
                     progress: bool = False, ngram_order: int = 0,
                     unadapted_nll: torch.Tensor | None = None) -> EvalResult:
    """Sliding-window val_bpb with score-first adaptation after every chunk but the last.

    Every rank scores its share of each chunk's windows; the ledger then learns what the others scored
    (one small collective per chunk) before it releases the chunk to the adapter."""
    t0 = time.perf_counter()
    device = torch.device(device)
    total = tokens.numel()
    ledger = TokenLedger(tokens, luts, device, ngram_order, unadapted_nll)
    view = AdaptationView(ledger)
    chunks = chunk_plan(window_plan(total, seq_len, stride), chunk_tokens, total)
    stages = {"score": 0.0, "adapt": 0.0}
    bar = progress_bar(len(chunks), "ttt", "chunk") if progress and rank == 0 else None
    for c, windows in enumerate(chunks):
        t = time.perf_counter()
        with eval_mode(model):
            score_rows(model, ledger, window_rows(rank_share(windows, rank, world_size)),
                       batch_rows=batch_tokens // (world_size * seq_len), autocast_bf16=autocast_bf16)
        lo, hi = chunk_span(c, chunk_tokens, total)
        ledger.sync_scored(lo + 1, hi)
        _sync(device)
        stages["score"] += time.perf_counter() - t
        if c < len(chunks) - 1:
            t = time.perf_counter()
            adapter.adapt(view, lo, hi, c, len(chunks))
            _sync(device)
            stages["adapt"] += time.perf_counter() - t
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    totals, report = ledger.finish()
    result = result_from(totals, report, t0)
    result.stages.update(stages)
    return result
