"""The training token loader: the challenge's `TokenStream` / `DistributedTokenLoader`, resumable.

As in openai/parameter-golf `train_gpt.py`, the shards are read one after another (memory-mapped
here) and the stream wraps forever; every call takes ONE contiguous chunk of
`world_size * (micro_batch_tokens + 1)` tokens and rank r keeps the r-th slice, inputs and targets
shifted by one. Because the chunk does not depend on which process asks, one process running two
accumulation micro-batches reads exactly the tokens that two ranks read with one micro-batch each,
so the global batch is the same on 1 CPU and on 8 GPUs.

Order: `seed=None` is the challenge's order (shards sorted by path, start at token 0). An integer
seed draws, from `numpy.random.default_rng(seed)`, first a permutation of the sorted shards and then
a start offset uniform in [0, tokens of the first shard in that order); after the start the stream
reads each shard whole and cycles through the same permuted order. Every rank must pass the same
seed. The position (shard order, shard, offset) is a small JSON-able dict, so a resumed run continues
on exactly the next token.

`ShuffledSequenceLoader` (records of 2026-04-05 onward, "ShuffledSequenceLoader") reads whole training
sequences in a seeded random order instead: each epoch draws a phase per shard (where its first
sequence starts) and one uniformly random order of all sequences of all shards (equivalent to the
records' "pick a shard in proportion to what it has left, then a random sequence of it"). Each
optimiser step takes the next world_size x B sequences of that order and rank r keeps the r-th B, so
ranks read disjoint sequences and the global batch is the same at every world size. Its state (epoch,
sequences consumed) is the same on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.data.shards import count_tokens, open_shard_memmap, read_shard_header
from pgolf.errors import UserError

DATA_ORDERS = ("challenge", "seeded", "shuffled")


class TokenStream:
    """Tokens of the shards in the given order, read sequentially and wrapping forever; with `vocab_size`,
    each shard's ids are checked the first time it is opened (a one-line UserError naming the shard)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], vocab_size: int | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.vocab_size = vocab_size
        self._checked: set[Path] = set()
        if not self.paths:
            raise ValueError("TokenStream needs at least one shard")
        if count_tokens(self.paths) == 0:
            raise UserError(f"the {len(self.paths)} shards starting with {self.paths[0]} hold no tokens; "
                            f"re-run `pgolf prepare --prepare.force true` or re-download with `pgolf data fineweb`")
        self._open(0, 0)

    def _open(self, file_index: int, position: int) -> None:
        self.file_index = file_index
        self.position = position
        path = self.paths[file_index]
        # One pass over a shard's ids the first time it is opened, not again when the stream wraps.
        self._tokens = open_shard_memmap(path, None if path in self._checked else self.vocab_size)
        self._checked.add(path)

    def take(self, n: int) -> np.ndarray:
        """The next `n` tokens (uint16, a copy), continuing into the next shard and wrapping as needed."""
        if n < 0:
            raise ValueError(f"cannot take {n} tokens")
        out = np.empty(n, dtype=np.uint16)
        filled = 0
        while filled < n:
            available = len(self._tokens) - self.position
            if available <= 0:
                self._open((self.file_index + 1) % len(self.paths), 0)
                continue
            k = min(n - filled, available)
            out[filled:filled + k] = self._tokens[self.position:self.position + k]
            filled += k
            self.position += k
        return out

    def state_dict(self) -> dict[str, int]:
        """Where the next token comes from."""
        return {"file_index": self.file_index, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict`."""
        file_index, position = int(state["file_index"]), int(state["position"])
        if not 0 <= file_index < len(self.paths):
            raise ValueError(f"stream state file_index={file_index} outside the {len(self.paths)} shards")
        if not 0 <= position <= read_shard_header(self.paths[file_index]):
            raise ValueError(f"stream state position={position} outside shard {self.paths[file_index]}")
        self._open(file_index, position)


class DistributedTokenLoader:
    """Per-rank (input, target) batches cut from one shared token stream."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], rank: int, world_size: int,
                 seed: int | None = None, vocab_size: int | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.vocab_size = vocab_size
        self._sorted = sorted((Path(p) for p in paths), key=str)
        if not self._sorted:
            raise ValueError("DistributedTokenLoader needs at least one shard")
        order, start = self._initial_order(seed)
        self.stream = TokenStream([self._sorted[i] for i in order], vocab_size)
        self.stream.load_state_dict({"file_index": 0, "position": start})
        self._tokens_consumed = 0

    def _initial_order(self, seed: int | None) -> tuple[list[int], int]:
        """Shard order and start offset: the challenge's for no seed, else drawn from the seed."""
        if seed is None:
            return list(range(len(self._sorted))), 0
        rng = np.random.default_rng(seed)
        order = [int(i) for i in rng.permutation(len(self._sorted))]
        first_tokens = read_shard_header(self._sorted[order[0]])
        return order, int(rng.integers(0, first_tokens)) if first_tokens > 0 else 0

    @property
    def tokens_consumed(self) -> int:
        """Tokens taken from the stream by all ranks together (inputs plus the one-token overlap)."""
        return self._tokens_consumed

    def next_batch(self, micro_batch_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's inputs and next-token targets, each (micro_batch_tokens // seq_len, seq_len) int64."""
        if seq_len < 1 or micro_batch_tokens < seq_len or micro_batch_tokens % seq_len:
            raise ValueError(f"micro_batch_tokens={micro_batch_tokens} must be a positive multiple of "
                             f"seq_len={seq_len}")
        span = micro_batch_tokens + 1  # one extra token so the last input has a target
        chunk = self.stream.take(self.world_size * span)
        self._tokens_consumed += chunk.size
        local = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span].astype(np.int64))
        x = local[:-1].view(-1, seq_len)  # (B, T)
        y = local[1:].view(-1, seq_len)  # (B, T)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """The exact stream position as plain JSON-able values."""
        return {
            "shards": [p.name for p in self.stream.paths],
            **self.stream.state_dict(),
            "tokens_consumed": self._tokens_consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position saved by `state_dict` (same shard files, any rank or world size)."""
        by_name = {p.name: p for p in self._sorted}
        missing = [name for name in state["shards"] if name not in by_name]
        if missing:
            raise UserError(f"loader state names shard {missing[0]}, which is not among the {len(by_name)} "
                            f"training shards in {self._sorted[0].parent}; resume with the same dataset")
        paths = [by_name[name] for name in state["shards"]]
        if paths != self.stream.paths:
            self.stream = TokenStream(paths, self.vocab_size)
        self.stream.load_state_dict(state)
        self._tokens_consumed = int(state["tokens_consumed"])


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


TrainLoader = DistributedTokenLoader | ShuffledSequenceLoader


def build_loader(paths: Sequence[str | os.PathLike[str]], *, data_order: str, seed: int, rank: int,
                 world_size: int, seq_len: int, vocab_size: int | None = None) -> TrainLoader:
    """The training loader of a `train.data_order`: the challenge's stream, its seeded variant, or shuffled;
    with `vocab_size`, every shard's ids are checked against it once, when the shard is first opened."""
    if data_order == "shuffled":
        return ShuffledSequenceLoader(paths, rank=rank, world_size=world_size, seed=seed, seq_len=seq_len,
                                      vocab_size=vocab_size)
    if data_order not in DATA_ORDERS:
        raise ValueError(f"unknown data order {data_order!r}")
    return DistributedTokenLoader(paths, rank=rank, world_size=world_size,
                                  seed=seed if data_order == "seeded" else None, vocab_size=vocab_size)
