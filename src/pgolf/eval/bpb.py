"""The challenge's metric, val_bpb, and the token ledger every evaluation scores through.

Bytes per target token follow openai/parameter-golf `train_gpt.py::eval_val`: the piece's own
bytes plus one for its leading "▁", except right after a boundary token (BOS), so a document's
first word gets no phantom space. Sums are float64 and reduced over ranks once, at the end.

The ledger enforces the score-first rules of evaluation-time adaptation (parameter-golf README
"Legal TTT" and issue #1017's conditions 3 and 4): each prediction is scored once, and adaptation
receives a token only after its score is committed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.dist import all_reduce_sum_
from pgolf.errors import UserError
from pgolf.tokenizer import BOS_ID, ByteLuts

LN2 = math.log(2.0)


def target_byte_counts(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLuts) -> torch.Tensor:
    """UTF-8 bytes each target token adds to the text; int64, shaped like the ids."""
    base = luts.base_bytes[target_ids].long()  # (...)
    space = luts.has_leading_space[target_ids] & ~luts.is_boundary[prev_ids]  # (...)
    return base + space.long()


@dataclass
class BpbTotals:
    """Running float64 sums of the metric on one device (this rank's share until `all_reduce`)."""

    nll_sum: torch.Tensor  # () float64, nats
    token_count: torch.Tensor  # () float64
    byte_count: torch.Tensor  # () float64

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> BpbTotals:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in range(3)))

    def add(self, nll: torch.Tensor, prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLuts,
            mask: torch.Tensor | None = None) -> None:
        """Accumulate per-target nll (nats, any shape like the ids) and the bytes of those targets.

        `mask` (bool, same shape) keeps only some targets without boolean indexing, which would
        make the host wait for the device on every batch.
        """
        num_bytes = target_byte_counts(prev_ids, target_ids, luts)  # (...)
        if mask is None:
            self.nll_sum += nll.double().sum()
            self.token_count += nll.numel()
        else:
            self.nll_sum += torch.where(mask, nll.double(), 0.0).sum()
            self.token_count += mask.sum()
            num_bytes = num_bytes * mask
        self.byte_count += num_bytes.sum().double()

    def all_reduce(self) -> None:
        """Sum over ranks in one collective (no-op on one process)."""
        stacked = all_reduce_sum_(torch.stack([self.nll_sum, self.token_count, self.byte_count]))  # (3,)
        self.nll_sum, self.token_count, self.byte_count = stacked.unbind(0)

    @property
    def loss(self) -> float:
        """Mean nll in nats per token."""
        return float(self.nll_sum / self.token_count)

    @property
    def bits_per_token(self) -> float:
        return self.loss / LN2

    @property
    def bpb(self) -> float:
        return bits_per_byte(float(self.nll_sum), float(self.byte_count))


def bits_per_byte(nll_sum_nats: float, byte_count: float) -> float:
    """Total nats converted to bits, per byte of text."""
    return nll_sum_nats / LN2 / byte_count


class LedgerError(RuntimeError):
    """A request the score-first rules forbid: a second score of a position, or an unscored span for adaptation."""


@dataclass(frozen=True)
class LedgerReport:
    """What the ledger saw over all ranks: every prediction scored once, and what adaptation was given."""

    num_positions: int  # predictions in the stream (tokens - 1)
    num_scored: int  # predictions scored exactly once (== num_positions, or `finish` raises)
    num_adapted: int  # predictions adaptation was given, each only after it was scored
    num_releases: int  # spans released to adapters (rank 0's count; every rank releases alike or none)
    ngram_order: int = 0  # order of the causal n-gram caches mixed into the scores (0: none; pgolf.eval.ngram)
    unadapted: bool = False  # the unadapted model's scores mixed in (pgolf.eval.ngram.mix_passes)
    lora_mixed: bool = False  # a second LoRA pass's scores mixed in (ttt.lora_mix_lr)
    ngram_seconds: float = 0.0  # time the mixing took (this rank)


Rows = np.ndarray  # (R, 3) int64 rows (base, lo, hi): inputs tokens[base:base+hi], scores targets base+lo+1..base+hi


class TokenLedger:
    """The one gate between the validation stream and everything that reads it during evaluation.

    Scorers read windows with `window_batch` and `commit` their per-token losses; a position can be
    committed once only (LedgerError otherwise). Adapters hold an `AdaptationView`, whose `release`
    hands out a span of tokens only when every prediction in it is already scored (on any rank), so
    adapting before scoring is not a flag but an error. The byte count of each committed position is
    the metric's (`target_byte_counts`), so the totals are val_bpb. Bookkeeping of which positions are
    scored lives on the host and follows from the row descriptors alone: no device sync per batch.
    Once every prediction is scored, `finish` can turn the committed losses into those of causal mixtures
    (`pgolf.eval.ngram`): with `unadapted_nll` (every prediction's loss under the model before any
    adaptation, from an earlier pass) and `lora_mix_nll` (each loss under a second LoRA pass) the adapted
    model mixed with those passes, then with `ngram_order` > 0 that mixed with n-gram caches of the stream
    and of the current document.
    """

    def __init__(self, tokens: torch.Tensor, luts: ByteLuts, device: torch.device | str = "cpu",
                 ngram_order: int = 0, unadapted_nll: torch.Tensor | None = None,
                 lora_mix_nll: torch.Tensor | None = None) -> None:
        self.device = torch.device(device)
        self.ngram_order = ngram_order
        for what, other in (("unadapted", unadapted_nll), ("second LoRA pass", lora_mix_nll)):
            if other is not None and other.shape != tokens.shape:
                raise ValueError(f"{what} losses {tuple(other.shape)} do not match the stream {tuple(tokens.shape)}")
        self._unadapted, self._lora_mixed = unadapted_nll is not None, lora_mix_nll is not None
        self._others = [o.to(self.device, torch.float32) for o in (unadapted_nll, lora_mix_nll) if o is not None]
        self._tokens = tokens.to(device=self.device, dtype=torch.long)  # (N,)
        self.num_tokens = int(tokens.numel())
        self._luts = luts.to(self.device)
        self._nll = torch.zeros(self.num_tokens + 1, dtype=torch.float32, device=self.device)  # (N+1,) last: sink
        self._mine = np.zeros(self.num_tokens, dtype=np.bool_)  # committed by this rank
        self._scored = np.zeros(self.num_tokens, dtype=np.bool_)  # committed by any rank (as far as synced)
        self._released = np.zeros(self.num_tokens, dtype=np.bool_)
        self._is_bos = (tokens == BOS_ID).cpu().numpy()  # (N,) host copy: release checks never wait for the device
        self._pending: tuple[np.ndarray, torch.Tensor, int] | None = None
        self.num_releases = 0

    # ---------------------------------------------------------------- scorer side
    def window_batch(self, rows_dev: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, width) of rows given on the device; columns past a row's hi are 0."""
        cols = torch.arange(width, device=self.device)  # (T,)
        inside = cols[None, :] < rows_dev[:, 2:3]  # (B, T)
        pos = (rows_dev[:, 0:1] + cols[None, :]).clamp(max=self.num_tokens - 2)  # (B, T)
        x = torch.where(inside, self._tokens[pos], 0)  # (B, T)
        y = torch.where(inside, self._tokens[pos + 1], 0)  # (B, T)
        return x, y

    def commit(self, rows: Rows, nll: torch.Tensor, rows_dev: torch.Tensor | None = None, col0: int = 0) -> None:
        """Record the losses (B, T - col0) of columns col0.. of each row; only columns lo..hi-1 count.

        A loss tensor that carries a graph is kept until the next commit, for `AdaptationView.release_losses`.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        for base, lo, hi in rows.tolist():
            if not (0 <= base and 0 <= lo <= hi and base + hi < self.num_tokens and lo >= col0):
                raise LedgerError(f"row ({base}, {lo}, {hi}) lies outside the stream of {self.num_tokens} tokens")
            if self._scored[base + lo + 1: base + hi + 1].any():
                raise LedgerError(f"positions {base + lo + 1}..{base + hi} include one already scored")
            self._scored[base + lo + 1: base + hi + 1] = True
            self._mine[base + lo + 1: base + hi + 1] = True
        if rows_dev is None:
            rows_dev = torch.from_numpy(rows).to(self.device)
        cols = torch.arange(col0, col0 + nll.shape[1], device=self.device)  # (T',)
        valid = (cols[None, :] >= rows_dev[:, 1:2]) & (cols[None, :] < rows_dev[:, 2:3])  # (B, T')
        index = torch.where(valid, rows_dev[:, 0:1] + cols[None, :] + 1, self.num_tokens)  # (B, T') sink if not
        self._nll.index_put_((index.flatten(),), nll.detach().float().flatten())
        self._pending = (rows, nll, col0) if nll.requires_grad else None

    def sync_scored(self, lo: int, hi: int) -> None:
        """Learn which positions in lo..hi-1 other ranks committed (a collective; every rank calls it)."""
        counts = all_reduce_sum_(torch.from_numpy(self._mine[lo:hi].astype(np.uint8)).to(self.device))
        counts = counts.cpu().numpy()
        if (counts > 1).any():
            raise LedgerError(f"positions in {lo}..{hi - 1} were scored by more than one rank")
        self._scored[lo:hi] |= counts > 0

    def bos_positions(self) -> list[int]:
        """Where documents start: the one fact about the stream a document-level plan reads before scoring."""
        return np.flatnonzero(self._is_bos).tolist()

    # ---------------------------------------------------------------- adapter side
    def _check_scored(self, lo: int, hi: int) -> None:
        # The span's first token is context only: scored, the stream's first token, or a document's BOS
        # (the boundary every document-level evaluation starts from).
        inside = 0 <= lo < hi <= self.num_tokens
        if not inside or not (lo == 0 or self._scored[lo] or self._is_bos[lo]) or not self._scored[lo + 1: hi].all():
            raise LedgerError(f"span {lo}..{hi - 1} includes tokens not yet scored; adaptation may only use "
                              f"tokens whose scores are committed")

    def release(self, lo: int, hi: int) -> torch.Tensor:
        """Tokens lo..hi-1 for adaptation (inputs lo..hi-2, targets lo+1..hi-1), all already scored."""
        self._check_scored(lo, hi)
        self._released[lo + 1: hi] = True
        self.num_releases += 1
        return self._tokens[lo:hi].clone()  # a copy: nothing an adapter does can alter what is scored later

    def release_losses(self, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph-carrying losses of the last commit, for `rows` (a subset of its rows, same order,
        possibly fewer), with a (B, T') mask of each row's scored columns."""
        if self._pending is None:
            raise LedgerError("no committed losses are waiting for adaptation")
        kept, nll, col0 = self._pending
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        if len(rows) > len(kept) or not np.array_equal(kept[: len(rows)], rows):
            raise LedgerError("losses requested for rows that were not the last ones committed")
        for base, lo, hi in rows.tolist():
            self._check_scored(base, base + hi + 1)  # the whole window: context and scored columns
            self._released[base + lo + 1: base + hi + 1] = True
        self.num_releases += 1
        cols = torch.arange(col0, col0 + nll.shape[1], device=self.device)  # (T',)
        lo_hi = torch.from_numpy(rows[:, 1:]).to(self.device)  # (B, 2)
        mask = (cols[None, :] >= lo_hi[:, :1]) & (cols[None, :] < lo_hi[:, 1:])  # (B, T')
        return nll[: len(rows)], mask

    # ---------------------------------------------------------------- totals
    def totals(self) -> BpbTotals:
        """This rank's unreduced sums over the positions it committed."""
        mine = torch.from_numpy(self._mine[1:]).to(self.device)  # (N-1,)
        nbytes = target_byte_counts(self._tokens[:-1], self._tokens[1:], self._luts)  # (N-1,)
        t = BpbTotals.zeros(self.device)
        t.nll_sum += torch.where(mine, self._nll[1:-1].double(), 0.0).sum()
        t.token_count += mine.sum()
        t.byte_count += torch.where(mine, nbytes, 0).sum().double()
        return t

    def token_losses(self) -> torch.Tensor:
        """Committed loss of each position (nats, 0 where not committed here); (N,) float32."""
        return self._nll[:-1].clone()

    def finish(self) -> tuple[BpbTotals, LedgerReport]:
        """Sums over all ranks and the check that every prediction was scored exactly once (collective)."""
        counts = all_reduce_sum_(torch.from_numpy(self._mine[1:].astype(np.uint8)).to(self.device)).cpu().numpy()
        released = all_reduce_sum_(torch.from_numpy(self._released[1:].astype(np.uint8)).to(self.device)).cpu().numpy()
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        if missing or repeated:
            raise LedgerError(f"{missing} predictions were never scored and {repeated} were scored more than once "
                              f"(of {counts.size}); every prediction must be scored exactly once")
        t0 = time.perf_counter()
        if self.ngram_order or self._others:
            self._mix()
        ngram_seconds = time.perf_counter() - t0
        totals = self.totals()
        totals.all_reduce()
        self._check_finite(totals)
        report = LedgerReport(num_positions=int(counts.size), num_scored=int((counts == 1).sum()),
                              num_adapted=int((released > 0).sum()), num_releases=self.num_releases,
                              ngram_order=self.ngram_order, ngram_seconds=ngram_seconds,
                              unadapted=self._unadapted, lora_mixed=self._lora_mixed)
        return totals, report

    def scored_losses(self) -> torch.Tensor:
        """Every prediction's committed loss, whichever rank scored it; (N,) float32 (collective)."""
        mine = torch.from_numpy(self._mine).to(self.device)  # (N,)
        return all_reduce_sum_(torch.where(mine, self._nll[:-1], 0.0))  # each position scored by one rank

    def _mix(self) -> None:
        """Replace this rank's committed losses by the mixed ones (collective: the mixture weights at a
        position read the losses of earlier positions, whichever rank scored them)."""
        from pgolf.eval.ngram import mix_passes, mix_scores

        mixed = self.scored_losses()  # (N,)
        if self._others:
            mixed = mix_passes(mixed, self._others, self._tokens)
        if self.ngram_order:
            vocab = int(self._luts.base_bytes.numel())  # the byte tables cover every id of the model and tokenizer
            mixed = mix_scores(mixed, self._tokens, self.ngram_order, vocab)
        self._nll[:-1] = torch.where(torch.from_numpy(self._mine).to(self.device), mixed, 0.0)

    def _check_finite(self, totals: BpbTotals) -> None:
        """A UserError naming the first non-finite prediction (of this rank) when the summed loss is not finite:
        a NaN or infinite val_bpb is never a result. Every rank sees the same reduced sum, so all raise alike."""
        total = float(totals.nll_sum)
        if math.isfinite(total):
            return
        mine = torch.from_numpy(self._mine).to(self.device)  # (N,)
        bad = torch.nonzero(mine & ~torch.isfinite(self._nll[:-1])).flatten()  # (K,)
        where = f" (first at validation token {int(bad[0])} of {self.num_tokens:,})" if bad.numel() else ""
        raise UserError(f"evaluation produced a non-finite loss: the summed nll is {total}{where}; the model's "
                        f"logits overflow or are NaN, so no val_bpb is reported: check the weights (re-export the "
                        f"artifact) or evaluate in float32 (--eval.dtype float32)")


class AdaptationView:
    """All an adapter is given of the validation stream: spans and losses the ledger has seen scored."""

    def __init__(self, ledger: TokenLedger) -> None:
        self._release = ledger.release
        self._release_losses = ledger.release_losses

    def release(self, lo: int, hi: int) -> torch.Tensor:
        """Tokens lo..hi-1, every prediction among them already scored; LedgerError otherwise."""
        return self._release(lo, hi)

    def release_losses(self, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Graph-carrying losses of the rows just committed, with their scored-column mask."""
        return self._release_losses(rows)
