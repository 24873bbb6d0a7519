"""Shared pieces of the training tests: the CPU run context, random training shards, a test-tiny
config pointed at them, and single-threaded torch for the duration of a test (tiny matmuls on a
shared 2-core machine run many times faster without thread hand-offs, and results stay deterministic)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.config import RunConfig
from pgolf.data.shards import shard_name, write_shard
from pgolf.dist import DistInfo
from pgolf.presets import get_preset

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_random_shards(root: Path, sizes: tuple[int, ...] = (30_000,), vocab: int = 512, val: bool = False) -> Path:
    """Training shards of uniform random tokens (and one validation shard when asked)."""
    rng = np.random.default_rng(0)
    for i, n in enumerate(sizes):
        write_shard(root / shard_name("train", i), rng.integers(0, vocab, n))
    if val:
        write_shard(root / shard_name("val", 0), rng.integers(0, vocab, 4_096))
    return root


def tiny_cfg(shard_dir: Path, iterations: int = 4, warmup: int = 2) -> RunConfig:
    """test-tiny on the given shards with a smaller batch (2 micro-batches of 8 x 32 tokens): float32,
    iteration-limited, no wall-clock schedule, no eval."""
    cfg = get_preset("test-tiny")
    cfg.data.dataset_dir = str(shard_dir)
    cfg.train.train_batch_tokens, cfg.train.train_seq_len, cfg.train.grad_accum_steps = 512, 32, 2
    cfg.train.iterations, cfg.train.warmup_steps, cfg.train.warmdown_iters = iterations, warmup, 2
    cfg.train.max_wallclock_seconds, cfg.train.val_loss_every, cfg.train.dtype = 0.0, 0, "float32"
    return cfg
