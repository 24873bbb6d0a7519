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

`pgolf.data.shuffled` holds the records' shuffled sequence order (`train.data_order shuffled`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

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




class TrainLoader(Protocol):
    """What the training loop (and GPTQ calibration, checkpoints) use of a training loader: the stream's
    `DistributedTokenLoader` and `pgolf.data.shuffled.ShuffledSequenceLoader` both are one."""

    @property
    def tokens_consumed(self) -> int: ...

    def next_batch(self, micro_batch_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_loader(paths: Sequence[str | os.PathLike[str]], *, data_order: str, seed: int, rank: int,
                 world_size: int, seq_len: int, vocab_size: int | None = None) -> TrainLoader:
    """The training loader of a `train.data_order`: the challenge's stream, its seeded variant, or shuffled
    (`pgolf.data.shuffled`, imported only then);
    with `vocab_size`, every shard's ids are checked against it once, when the shard is first opened."""
    if data_order == "shuffled":
        from pgolf.data.shuffled import ShuffledSequenceLoader

        return ShuffledSequenceLoader(paths, rank=rank, world_size=world_size, seed=seed, seq_len=seq_len,
                                      vocab_size=vocab_size)
    if data_order not in DATA_ORDERS:
        raise ValueError(f"unknown data order {data_order!r}")
    return DistributedTokenLoader(paths, rank=rank, world_size=world_size,
                                  seed=seed if data_order == "seeded" else None, vocab_size=vocab_size)
