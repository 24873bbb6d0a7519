"""Per-document LoRA test-time training, score-first (parameter-golf 2026-03-17 LoRA_TTT; the doc-independent
TTT of 2026-04-10 VarLenAttn onwards, without the later phased global SGD).

Documents are the spans between BOS tokens (each also predicts the next document's BOS, so together
they score exactly the predictions a flat evaluation scores). Each document is read in chunks of
`ttt.lora_chunk` predictions, each chunk scored in a window of at most seq_len tokens of that
document's own prefix; after a chunk is scored and committed, its mean loss takes one Adam step on
the document's own LoRA adapters (rank r, scale alpha/r) on attention q, k, v and output, the MLP
output and the head (a delta on the logits, since the head is usually the tied embedding). With
`steps` > 1 the chunk takes further steps, each a new forward over windows the adapter asks the ledger
for (`AdaptationView.release`: scored tokens only).
Adapters are per sample ((B, r, in) and (B, out, r)), every document starting from the same A (drawn
once from the seed) and B = 0, rebuilt for every batch of documents; Adam is elementwise and there is
no clipping, so no document's tokens reach another document's scores. Documents are sorted longest
first and batched; batches are dealt to ranks in turn.

The base model's weights are frozen and unchanged; adapters are attached with forward hooks that are
removed afterwards.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.eval.bpb import AdaptationView, TokenLedger
from pgolf.eval.sliding import EvalResult, eval_mode, progress_bar, result_from
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.gpt import MLP
from pgolf.tokenizer import ByteLuts

Span = tuple[int, int]  # tokens start..end-1 of a document: its BOS (or the stream start) .. the next BOS


def document_spans(bos_positions: list[int], num_tokens: int) -> list[Span]:
    """Documents found by BOS: (start, end) where start is a BOS (or 0) and end is one past the next BOS
    (or the stream's end), so predictions start+1..end-1 of all documents are 1..N-1, each once."""
    starts = [p for p in bos_positions if p < num_tokens - 1]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [(s, e + 1) for s, e in zip(starts, starts[1:])] + [(starts[-1], num_tokens)]


def document_rows(span: Span, chunk: int, seq_len: int) -> list[tuple[int, int, int]]:
    """Ledger rows (base, lo, hi) scoring a document chunk by chunk, each window its own prefix only."""
    if chunk > seq_len:
        raise ValueError(f"chunk={chunk} must be <= seq_len={seq_len}")
    start, end = span
    num_preds = end - start - 1
    rows = []
    for cs in range(0, num_preds, chunk):
        ce = min(cs + chunk, num_preds)
        ws = max(0, ce - seq_len)
        rows.append((start + ws, cs - ws, ce - ws))
    return rows


def document_batches(spans: list[Span], batch_docs: int) -> list[list[Span]]:
    """Documents longest first (ties by position), in batches of batch_docs."""
    ordered = sorted(spans, key=lambda s: (s[0] - s[1], s[0]))
    return [ordered[i: i + batch_docs] for i in range(0, len(ordered), batch_docs)]


class BatchedLoRA(nn.Module):
    """A low-rank delta scale * x A^T B^T with its own A (B, r, in) and B (B, out, r) per sample;
    B starts at zero so the adapted model starts as the base model."""

    def __init__(self, A: torch.Tensor, out_dim: int, scale: float) -> None:
        super().__init__()
        self.A = nn.Parameter(A)  # (B, r, in)
        self.B = nn.Parameter(torch.zeros(A.shape[0], out_dim, A.shape[1], device=A.device))  # (B, out, r)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]  # rows past b belong to documents already finished
        low = torch.bmm(x, self.A[:b].transpose(1, 2).to(x.dtype))  # (b, T, r)
        return torch.bmm(low, self.B[:b].transpose(1, 2).to(x.dtype)) * self.scale  # (b, T, out)


def lora_targets(model: nn.Module) -> list[nn.Linear]:
    """The adapted projections, found by structure: attention q, k, v and output, and the MLP output."""
    out: list[nn.Linear] = []
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            out += [m.c_q, m.c_k, m.c_v, m.proj]
        elif isinstance(m, MLP):
            out.append(m.proj)
    return out


def lora_init(model: nn.Module, rank: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """The A matrices every document starts from, (r, in) per target and the head's last: uniform in
    +-1/sqrt(in) (PyTorch's Linear init, as the records). The same start for every document keeps a
    document's score independent of the batch it lands in, and costs one draw per evaluation."""
    g = torch.Generator().manual_seed(seed)
    dims = [t.in_features for t in lora_targets(model)] + [model.tok_emb.embedding_dim]
    return [((torch.rand(rank, d, generator=g) * 2 - 1) / math.sqrt(d)).to(device) for d in dims]


class DocumentAdapters(nn.Module):
    """Every adapter of one document batch: one per target projection and one on the logits."""

    def __init__(self, model: nn.Module, batch: int, init: list[torch.Tensor], alpha: float) -> None:
        super().__init__()
        self.targets = lora_targets(model)
        outs = [t.out_features for t in self.targets] + [model.tok_emb.num_embeddings]
        rank = init[0].shape[0]
        adapters = [BatchedLoRA(a.expand(batch, -1, -1).clone(), d_out, alpha / rank)  # (B, r, in) own copies
                    for a, d_out in zip(init, outs)]
        self.deltas = nn.ModuleList(adapters[:-1])
        self.head = adapters[-1]

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Forward hooks adding each delta to its projection's output, removed on exit."""
        handles = [t.register_forward_hook(lambda _m, args, out, d=d: out + d(args[0]))
                   for t, d in zip(self.targets, self.deltas)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def token_nll(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, col0: int = 0) -> torch.Tensor:
        """Per-token nll (b, T - col0) of the adapted model from column col0 on (the last layer and the head
        run only there): full-vocabulary softmax cross-entropy."""
        with self.attached():
            h = model.hidden_states(x, keep_from=col0)  # (b, T', C)
        logits = model.logits_from_hidden(h) + self.head(h).float()  # (b, T', V)
        y = y[:, col0:]  # (b, T')
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)


def released_windows(view: AdaptationView, rows: np.ndarray, width: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, width) of scored rows (base, lo, hi), read through the view; 0 past hi."""
    x = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    y = torch.zeros_like(x)
    for i, (base, _lo, hi) in enumerate(rows.tolist()):
        window = view.release(base, base + hi + 1)  # (hi + 1,)
        x[i, :hi], y[i, :hi] = window[:-1], window[1:]
    return x, y


def _score_and_adapt_batch(model: nn.Module, ledger: TokenLedger, view: AdaptationView, docs: list[Span], *,
                           init: list[torch.Tensor], alpha: float, lr: float, chunk: int, seq_len: int,
                           steps: int, autocast_bf16: bool) -> None:
    """All chunks of one batch of documents (sorted longest first), each scored then learned from."""
    adapters = DocumentAdapters(model, len(docs), init, alpha)  # fresh per batch: the reset
    # beta1 = 0 as the records: one step per chunk, so momentum would mostly carry stale directions
    opt = torch.optim.Adam(adapters.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-10)
    plans = [document_rows(d, chunk, seq_len) for d in docs]
    dtype = torch.bfloat16 if autocast_bf16 else torch.float32
    for c in range(len(plans[0])):
        rows = np.asarray([p[c] for p in plans if c < len(p)], dtype=np.int64)  # active documents, a prefix
        num_learning = sum(c + 1 < len(p) for p in plans)  # documents with chunks still to come, a prefix
        rows_dev = torch.from_numpy(rows).to(ledger.device)
        x, y = ledger.window_batch(rows_dev, int(rows[:, 2].max()))  # (b, T) each
        col0 = int(rows[:, 1].min())  # columns before every row's first scored one are context only
        with torch.set_grad_enabled(num_learning > 0), torch.autocast(ledger.device.type, dtype, autocast_bf16):
            nll = adapters.token_nll(model, x, y, col0)  # (b, T - col0)
        ledger.commit(rows, nll, rows_dev, col0=col0)
        if num_learning:
            losses, mask = view.release_losses(rows[:num_learning])  # (b', T - col0) each
            for step in range(steps):
                if step:  # a fresh forward of the adapted model over the same, scored, windows
                    xs, ys = released_windows(view, rows[:num_learning], x.shape[1], ledger.device)
                    with torch.autocast(ledger.device.type, dtype, autocast_bf16):
                        losses = adapters.token_nll(model, xs, ys, col0)  # (b', T - col0)
                per_doc = (losses * mask).sum(1) / mask.sum(1)  # (b',) each document's mean chunk loss
                opt.zero_grad(set_to_none=True)
                per_doc.sum().backward()
                opt.step()


def adapt_documents(model: nn.Module, ledger: TokenLedger, *, seq_len: int, chunk: int, batch_docs: int,
                    lora_rank: int, alpha: float, lr: float, steps: int = 1, seed: int = 0, rank: int = 0,
                    world_size: int = 1, autocast_bf16: bool = False, progress: bool = False) -> None:
    """Score this rank's document batches into the ledger, adapting per document after each chunk.

    Batches are formed from all documents (the same at any world size) and dealt to ranks in turn; the
    base model is frozen meanwhile and its requires_grad flags restored after."""
    view = AdaptationView(ledger)
    batches = document_batches(document_spans(ledger.bos_positions(), ledger.num_tokens), batch_docs)
    mine = list(range(rank, len(batches), world_size))
    init = lora_init(model, lora_rank, seed, ledger.device)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    bar = progress_bar(len(mine), "ttt", "batch") if progress and rank == 0 else None
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        with eval_mode(model, inference=False):
            for b in mine:
                _score_and_adapt_batch(model, ledger, view, batches[b], init=init, alpha=alpha, lr=lr, chunk=chunk,
                                       seq_len=seq_len, steps=steps, autocast_bf16=autocast_bf16)
                if bar is not None:
                    bar.update(1)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()


def evaluate_lora(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, chunk: int,
                  batch_docs: int, lora_rank: int, alpha: float, lr: float, steps: int = 1, seed: int = 0,
                  rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu", autocast_bf16: bool = False,
                  progress: bool = False, ngram_order: int = 0, unadapted_nll: torch.Tensor | None = None,
                  lora_mix_nll: torch.Tensor | None = None) -> EvalResult:
    """val_bpb with per-document score-first LoRA adaptation (see `adapt_documents`), mixed with the losses
    of earlier passes and n-gram caches as `TokenLedger` says."""
    t0 = time.perf_counter()
    ledger = TokenLedger(tokens, luts, device, ngram_order, unadapted_nll, lora_mix_nll)
    adapt_documents(model, ledger, seq_len=seq_len, chunk=chunk, batch_docs=batch_docs, lora_rank=lora_rank,
                    alpha=alpha, lr=lr, steps=steps, seed=seed, rank=rank, world_size=world_size,
                    autocast_bf16=autocast_bf16, progress=progress)
    totals, report = ledger.finish()
    return result_from(totals, report, t0)


def lora_losses(model: nn.Module, tokens: torch.Tensor, luts: ByteLuts, *, seq_len: int, chunk: int,
                batch_docs: int, lora_rank: int, alpha: float, lr: float, steps: int = 1, seed: int = 0,
                rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu", autocast_bf16: bool = False,
                progress: bool = False) -> tuple[torch.Tensor, EvalResult]:
    """Every prediction's loss under a score-first LoRA pass of its own (the second pass `ttt.lora_mix_lr`
    runs), on every rank: (N,) float32, index t = token t; and that pass's own result (collective)."""
    t0 = time.perf_counter()
    ledger = TokenLedger(tokens, luts, device)
    adapt_documents(model, ledger, seq_len=seq_len, chunk=chunk, batch_docs=batch_docs, lora_rank=lora_rank,
                    alpha=alpha, lr=lr, steps=steps, seed=seed, rank=rank, world_size=world_size,
                    autocast_bf16=autocast_bf16, progress=progress)
    totals, report = ledger.finish()  # every prediction scored exactly once, each adapted on only after
    return ledger.scored_losses(), result_from(totals, report, t0)
