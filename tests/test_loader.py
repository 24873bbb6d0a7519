"""The training loader: the challenge's batch geometry, world-size invariance, wrap-around, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.loader import DistributedTokenLoader, TokenStream
from pgolf.data.shards import shard_name, write_shard
from pgolf.errors import UserError


def make_shards(root: Path, sizes: list[int]) -> tuple[list[Path], np.ndarray]:
    """Shards holding consecutive integers, so every token tells where it came from."""
    paths, start = [], 0
    for i, n in enumerate(sizes):
        paths.append(write_shard(root / shard_name("train", i), np.arange(start, start + n)))
        start += n
    return paths, np.arange(start)


def test_stream_wraps_across_shards(tmp_path: Path) -> None:
    paths, all_tokens = make_shards(tmp_path, [5, 0, 3])
    stream = TokenStream(paths)
    got = np.concatenate([stream.take(3), stream.take(4), stream.take(10)])
    assert got.dtype == np.uint16
    assert got.tolist() == np.resize(all_tokens, 17).tolist()


def test_batch_geometry_matches_challenge(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [100])
    loader = DistributedTokenLoader(paths, rank=0, world_size=1)
    x, y = loader.next_batch(8, 4)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 4)
    assert x.flatten().tolist() == list(range(8)) and y.flatten().tolist() == list(range(1, 9))
    x, _ = loader.next_batch(8, 4)
    assert x[0, 0].item() == 9  # each call takes a fresh span of micro+1 tokens
    assert loader.tokens_consumed == 18
    with pytest.raises(ValueError):
        loader.next_batch(10, 4)


def test_one_rank_two_micro_equals_two_ranks_one_micro(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [37, 23, 41])
    micro, seq = 12, 4
    single = DistributedTokenLoader(paths, rank=0, world_size=1)
    ranks = [DistributedTokenLoader(paths, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # enough steps to wrap around the 101 tokens several times
        one = [single.next_batch(micro, seq) for _ in range(2)]
        two = [loader.next_batch(micro, seq) for loader in ranks]
        for (x1, y1), (x2, y2) in zip(one, two):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert single.tokens_consumed == ranks[0].tokens_consumed == ranks[1].tokens_consumed


def test_ranks_are_disjoint_and_cover_the_chunk(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [1000])
    world, micro, seq = 4, 8, 4
    loaders = [DistributedTokenLoader(paths, rank=r, world_size=world) for r in range(world)]
    xs = [loader.next_batch(micro, seq)[0].flatten().tolist() for loader in loaders]
    for r, x in enumerate(xs):
        assert x == list(range(r * (micro + 1), r * (micro + 1) + micro))
    assert len({t for x in xs for t in x}) == world * micro


def test_state_dict_resumes_exactly(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [30, 17, 25])
    for seed in (None, 3):
        loader = DistributedTokenLoader(paths, rank=1, world_size=2, seed=seed)
        for _ in range(5):
            loader.next_batch(8, 4)
        state = json.loads(json.dumps(loader.state_dict()))  # plain JSON values only
        expected = [loader.next_batch(8, 4) for _ in range(6)]
        resumed = DistributedTokenLoader(paths, rank=1, world_size=2, seed=None if seed else 99)
        resumed.load_state_dict(state)
        assert resumed.tokens_consumed == state["tokens_consumed"]
        for (x, y), (xr, yr) in zip(expected, (resumed.next_batch(8, 4) for _ in range(6))):
            assert torch.equal(x, xr) and torch.equal(y, yr)
        assert resumed.state_dict() == loader.state_dict()


def test_seed_none_is_sorted_order_from_zero(tmp_path: Path) -> None:
    paths, all_tokens = make_shards(tmp_path, [10, 10, 10])
    loader = DistributedTokenLoader(list(reversed(paths)), rank=0, world_size=1)
    x, _ = loader.next_batch(24, 4)
    assert x.flatten().tolist() == all_tokens[:24].tolist()
    assert loader.state_dict()["shards"] == [p.name for p in paths]


def test_seed_is_deterministic_and_changes_order(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [50] * 6)

    def first_batches(seed: int | None) -> list[list[int]]:
        loader = DistributedTokenLoader(paths, rank=0, world_size=1, seed=seed)
        return [loader.next_batch(16, 8)[0].flatten().tolist() for _ in range(4)]

    assert first_batches(5) == first_batches(5)
    assert first_batches(5) != first_batches(6)
    assert first_batches(5) != first_batches(None)
    loader = DistributedTokenLoader(paths, rank=0, world_size=1, seed=5)
    state = loader.state_dict()
    rng = np.random.default_rng(5)
    order = rng.permutation(6)
    assert state["shards"] == [paths[i].name for i in order]
    assert state["file_index"] == 0 and state["position"] == int(rng.integers(0, 50))


def test_resume_with_other_shards_is_refused(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [10, 10])
    state = DistributedTokenLoader(paths, rank=0, world_size=1).state_dict()
    state["shards"][0] = "fineweb_train_000099.bin"
    with pytest.raises(UserError, match="fineweb_train_000099.bin"):
        DistributedTokenLoader(paths, rank=0, world_size=1).load_state_dict(state)
