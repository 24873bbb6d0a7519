"""The training loader: the challenge's batch geometry, world-size invariance, wrap-around, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.loader import DistributedTokenLoader, TokenStream, build_loader
from pgolf.data.shuffled import ShuffledSequenceLoader
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


def shuffled(paths: list[Path], seed: int = 7, rank: int = 0, world: int = 1, seq: int = 4) -> ShuffledSequenceLoader:
    return ShuffledSequenceLoader(paths, rank=rank, world_size=world, seed=seed, seq_len=seq)


def starts_of(x: torch.Tensor) -> list[int]:
    """First token of each sequence: with consecutive-integer shards, where the sequence starts."""
    return x[:, 0].tolist()


def test_shuffled_covers_every_sequence_once_per_epoch_on_one_shard(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [203])
    loader = shuffled(paths)
    span, n = 5, len(loader._order)
    phase = loader._phases[0]
    assert n == (203 - phase) // span and 0 <= phase < span
    seen = [s for _ in range(n) for s in starts_of(loader.next_batch(4, 4)[0])]
    assert sorted(seen) == [phase + k * span for k in range(n)]  # each sequence exactly once
    assert seen != sorted(seen)  # and not in file order
    x, y = shuffled(paths).next_batch(8, 4)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)  # targets shifted by one


def test_shuffled_epochs_redraw_and_seeds_are_deterministic(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [120, 75, 64])

    def epoch_starts(seed: int, epochs: int) -> list[list[int]]:
        """Sequence starts grouped by the epoch they came from, one sequence per batch."""
        loader = shuffled(paths, seed=seed)
        out: list[list[int]] = [[] for _ in range(epochs)]
        while True:
            start = starts_of(loader.next_batch(4, 4)[0])[0]
            if loader.epoch == epochs:
                return out
            out[loader.epoch].append(start)

    first = epoch_starts(3, 2)
    assert first == epoch_starts(3, 2)
    assert first != epoch_starts(4, 2)
    for starts in first:
        assert len(starts) == len(set(starts))  # once per epoch, drawn from all three shards
        assert {s < 120 for s in starts} == {True, False} and any(s >= 195 for s in starts)
    assert first[0] != first[1]


def test_shuffled_ranks_are_disjoint_and_match_one_process(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [150, 90])
    single = shuffled(paths)
    ranks = [shuffled(paths, rank=r, world=2) for r in range(2)]
    for _ in range(12):  # several epochs of 48 sequences
        one = [starts_of(single.next_batch(8, 4)[0]) for _ in range(2)]
        two = [starts_of(loader.next_batch(8, 4)[0]) for loader in ranks]
        assert one == two  # rank r's batch is the r-th micro-batch of one process
        assert not set(two[0]) & set(two[1])
        assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_shuffled_resumes_exactly_across_epochs(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [97, 61])
    loader = shuffled(paths, rank=1, world=2)
    for _ in range(5):
        loader.next_batch(12, 4)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [loader.next_batch(12, 4) for _ in range(9)]  # crosses an epoch boundary
    assert loader.state_dict()["epoch"] > state["epoch"]
    resumed = shuffled(paths, seed=99, rank=1, world=2)
    resumed.load_state_dict(state)
    for (x, y), (xr, yr) in zip(expected, (resumed.next_batch(12, 4) for _ in range(9))):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    other, _ = make_shards(tmp_path / "other", [97, 62])
    with pytest.raises(UserError, match="same dataset"):
        shuffled(other).load_state_dict(state)


def test_build_loader_picks_the_order(tmp_path: Path) -> None:
    paths, _ = make_shards(tmp_path, [100])
    kw = dict(seed=1, rank=0, world_size=1, seq_len=4)
    assert isinstance(build_loader(paths, data_order="shuffled", **kw), ShuffledSequenceLoader)
    challenge = build_loader(paths, data_order="challenge", **kw)
    assert isinstance(challenge, DistributedTokenLoader) and challenge.seed is None
    assert build_loader(paths, data_order="seeded", **kw).seed == 1
