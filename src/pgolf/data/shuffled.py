"""The records' shuffled training order (2026-04-05 onward, "ShuffledSequenceLoader"), `train.data_order shuffled`.

`ShuffledSequenceLoader` reads whole training sequences in a seeded random order instead of the
challenge's stream (`pgolf.data.loader`): each epoch draws a phase per shard (where its first sequence
starts) and one uniformly random order of all sequences of all shards (equivalent to the records' "pick
a shard in proportion to what it has left, then a random sequence of it"). Each optimiser step takes the
next world_size x B sequences of that order and rank r keeps the r-th B, so ranks read disjoint
sequences and the global batch is the same at every world size. Its state (epoch, sequences consumed)
is the same on every rank. Imported only by runs that use it, so a bundle ships it only then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.data.shards import open_shard_memmap, read_shard_header
from pgolf.errors import UserError


class ShuffledSequenceLoader:
    """Per-rank batches of whole sequences (seq_len + 1 tokens each) in a seeded random order per epoch."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], rank: int, world_size: int, seed: int,
                 seq_len: int, vocab_size: int | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        self.rank, self.world_size, self.seed, self.seq_len = rank, world_size, seed, seq_len
        self.vocab_size = vocab_size
        self._sorted = sorted((Path(p) for p in paths), key=str)
        if not self._sorted:
            raise ValueError("ShuffledSequenceLoader needs at least one shard")
        self._lengths = [read_shard_header(p) for p in self._sorted]
        self._memmaps: dict[int, np.ndarray] = {}
        self._tokens_consumed = 0
        self._start_epoch(0, 0)

    @property
    def span(self) -> int:
        """Tokens per sequence: inputs plus the one-token shift of the targets."""
        return self.seq_len + 1

    def _start_epoch(self, epoch: int, cursor: int) -> None:
        """This epoch's phases and order, drawn from (seed, epoch) alone, so any epoch can be rebuilt."""
        rng = np.random.default_rng([self.seed, epoch])
        span = self.span
        # A shard shorter than one sequence contributes none; otherwise its phase keeps >= 1 sequence.
        self._phases = [int(rng.integers(0, min(span, n - span + 1))) if n >= span else 0 for n in self._lengths]
        counts = [(n - ph) // span if n >= span else 0 for n, ph in zip(self._lengths, self._phases)]
        if sum(counts) == 0:
            raise UserError(f"the training shards in {self._sorted[0].parent} hold no sequence of "
                            f"{span} tokens; use shorter --train.train_seq_len or more data")
        self._ends = np.cumsum(counts)
        self._order = rng.permutation(int(self._ends[-1]))
        self.epoch, self.cursor = epoch, cursor

    def _sequence(self, index: int) -> np.ndarray:
        """Tokens of sequence `index` of the current epoch's numbering."""
        shard = int(np.searchsorted(self._ends, index, side="right"))
        first = int(self._ends[shard - 1]) if shard > 0 else 0
        if shard not in self._memmaps:
            self._memmaps[shard] = open_shard_memmap(self._sorted[shard], self.vocab_size)  # ids checked once, here
        start = self._phases[shard] + (index - first) * self.span
        return self._memmaps[shard][start:start + self.span]

    def _take(self, n: int) -> list[np.ndarray]:
        """The next n sequences of the order, crossing into the next epoch as needed."""
        out: list[np.ndarray] = []
        while len(out) < n:
            if self.cursor >= len(self._order):
                self._start_epoch(self.epoch + 1, 0)
            k = min(n - len(out), len(self._order) - self.cursor)
            out.extend(self._sequence(int(i)) for i in self._order[self.cursor:self.cursor + k])
            self.cursor += k
        return out

    @property
    def tokens_consumed(self) -> int:
        """Tokens of all sequences handed to all ranks."""
        return self._tokens_consumed

    def next_batch(self, micro_batch_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's inputs and next-token targets, each (micro_batch_tokens // seq_len, seq_len) int64."""
        if seq_len != self.seq_len or micro_batch_tokens < seq_len or micro_batch_tokens % seq_len:
            raise ValueError(f"micro_batch_tokens={micro_batch_tokens} must be a positive multiple of the "
                             f"loader's seq_len={self.seq_len} (got seq_len={seq_len})")
        per_rank = micro_batch_tokens // seq_len
        # Every rank steps through the whole global chunk so the cursors agree; only its share is read.
        skip_before = self.rank * per_rank
        self._skip(skip_before)
        mine = self._take(per_rank)
        self._skip((self.world_size - self.rank - 1) * per_rank)
        self._tokens_consumed += self.world_size * per_rank * self.span
        local = torch.from_numpy(np.stack(mine).astype(np.int64))  # (B, T + 1)
        return local[:, :-1].contiguous(), local[:, 1:].contiguous()  # (B, T), (B, T)

    def _skip(self, n: int) -> None:
        while n > 0:
            if self.cursor >= len(self._order):
                self._start_epoch(self.epoch + 1, 0)
            k = min(n, len(self._order) - self.cursor)
            self.cursor += k
            n -= k

    def state_dict(self) -> dict[str, Any]:
        """The exact position as plain JSON-able values (the same on every rank)."""
        return {
            "order": "shuffled",
            "seed": self.seed,
            "seq_len": self.seq_len,
            "shards": [p.name for p in self._sorted],
            "shard_tokens": list(self._lengths),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "tokens_consumed": self._tokens_consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position saved by `state_dict` (same shards, any rank or world size)."""
        names = [p.name for p in self._sorted]
        if state.get("order") != "shuffled" or state["shards"] != names or state["shard_tokens"] != self._lengths:
            raise UserError(f"loader state was saved for other training shards than the {len(names)} in "
                            f"{self._sorted[0].parent}; resume with the same dataset")
        if int(state["seq_len"]) != self.seq_len:
            raise UserError(f"loader state is for sequences of {state['seq_len']} tokens, not {self.seq_len}")
        self.seed = int(state["seed"])
        self._start_epoch(int(state["epoch"]), int(state["cursor"]))
        self._tokens_consumed = int(state["tokens_consumed"])
