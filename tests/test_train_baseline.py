"""The baseline's numbers do not move: with every technique switch off, the trainer reproduces a
frozen copy of the original training step (tests/frozen_baseline.py) exactly, losses and weights,
warm-up steps included (they are undone), tied and untied, with and without gradient clipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frozen_baseline import frozen_lr_multiplier, frozen_train
from helpers_train import CPU, one_thread  # noqa: F401  (one_thread: autouse)
from pgolf.data.shards import shard_name, write_shard
from pgolf.presets import get_preset
from pgolf.runlog import RunLogger
from pgolf.train import train


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    write_shard(root / shard_name("train", 0), rng.integers(0, 512, 30_000))
    write_shard(root / shard_name("train", 1), rng.integers(0, 512, 20_000))
    return root


@pytest.mark.parametrize("tie,clip", [(True, 0.0), (False, 0.5)])
def test_all_switches_off_reproduces_the_frozen_baseline(shard_dir: Path, tie: bool, clip: float) -> None:
    cfg = get_preset("test-tiny")
    cfg.data.dataset_dir = str(shard_dir)
    cfg.model.tie_embeddings = tie
    cfg.optim.grad_clip_norm = clip
    cfg.optim.muon_momentum_warmup_steps = 4
    cfg.train.iterations, cfg.train.warmdown_iters, cfg.train.warmup_steps = 7, 3, 2
    cfg.train.max_wallclock_seconds, cfg.train.val_loss_every, cfg.train.dtype = 0.0, 0, "float32"
    cfg.optim.muon_dtype = "float32"
    expected_losses, expected_state = frozen_train(cfg)
    result = train(cfg, CPU, RunLogger(None, echo=False))
    assert result.steps == 7
    got = result.model.state_dict()
    assert set(got) == set(expected_state)
    for name, value in expected_state.items():
        assert torch.equal(got[name], value), name
    assert result.final_train_loss == expected_losses[-1]
    assert len(set(expected_losses)) == len(expected_losses)  # the run really trained


def test_wallclock_warmdown_matches_the_frozen_schedule() -> None:
    from pgolf.optim.schedule import lr_multiplier

    for step in (0, 1, 50, 199, 200, 230, 239, 240, 400):
        for elapsed_ms in (0.0, 1000.0, 9_500.0, 11_000.0, 12_000.0, 13_000.0):
            for cap in (0.0, 12_000.0):
                kw = dict(step=step, elapsed_ms=elapsed_ms, max_wallclock_ms=cap, warmdown_iters=40, iterations=240)
                assert lr_multiplier(**kw) == frozen_lr_multiplier(**kw)
