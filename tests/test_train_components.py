"""Training components: the Trainer iterates them for updates, the warm-up undo and checkpoints; the
weights to export come from them; switches flip once and follow a restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pgolf.components import Component, Disabled, StepEvent, SwitchAtThreshold
from pgolf.config import RunConfig
from pgolf.data.shards import shard_name, write_shard
from pgolf.dist import DistInfo
from pgolf.presets import get_preset
from pgolf.runlog import RunLogger
from pgolf.train import Trainer, train

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shard(root / shard_name("train", 0), np.random.default_rng(0).integers(0, 512, 30_000))
    return root


def tiny_cfg(shard_dir: Path, iterations: int = 4, warmup: int = 2) -> RunConfig:
    cfg = get_preset("test-tiny")
    cfg.data.dataset_dir = str(shard_dir)
    cfg.train.iterations, cfg.train.warmup_steps, cfg.train.warmdown_iters = iterations, warmup, 2
    cfg.train.max_wallclock_seconds, cfg.train.val_loss_every, cfg.train.dtype = 0.0, 0, "float32"
    return cfg


class Recorder(Component):
    """Remembers every event and sums the weights it saw (a stand-in for any weight statistic)."""

    name = "recorder"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.events: list[StepEvent] = []
        self.weight_sum = torch.zeros((), dtype=torch.float64)

    def update(self, event: StepEvent) -> None:
        self.events.append(event)
        self.weight_sum += sum(p.detach().double().sum() for p in self.model.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"steps": [e.step for e in self.events], "weight_sum": self.weight_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = [e for e in self.events if e.step in state["steps"]][: len(state["steps"])]
        self.weight_sum = state["weight_sum"].clone()


def test_warmup_steps_do_not_leak_into_component_state(shard_dir: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=3, warmup=2)
    trainer = Trainer(cfg, CPU)
    recorder = Recorder(trainer.model)
    trainer.add_component(recorder)
    train(cfg, CPU, RunLogger(None, echo=False), trainer=trainer)
    assert [e.step for e in recorder.events] == [1, 2, 3]
    # The same run without warm-up steps saw exactly the same weights.
    cfg0 = tiny_cfg(shard_dir, iterations=3, warmup=0)
    trainer0 = Trainer(cfg0, CPU)
    recorder0 = Recorder(trainer0.model)
    trainer0.add_component(recorder0)
    train(cfg0, CPU, RunLogger(None, echo=False), trainer=trainer0)
    assert torch.equal(recorder.weight_sum, recorder0.weight_sum)
    assert [e.lr_mul for e in recorder.events] == [1.0, 1.0, 0.5]  # warmdown over the last 2 of 3 steps
    assert all(0.0 <= e.frac <= 1.0 for e in recorder.events)


def test_snapshot_restore_covers_rng_and_loader(shard_dir: Path) -> None:
    trainer = Trainer(tiny_cfg(shard_dir), CPU)
    snap = trainer.snapshot()
    before = (torch.rand(3), np.random.rand(2), trainer.loader.next_batch(trainer.micro_tokens, 64)[0])
    trainer.restore(snap)
    after = (torch.rand(3), np.random.rand(2), trainer.loader.next_batch(trainer.micro_tokens, 64)[0])
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


def test_component_names_are_unique(shard_dir: Path) -> None:
    trainer = Trainer(tiny_cfg(shard_dir), CPU)
    trainer.add_component(Disabled("extra"))
    with pytest.raises(ValueError, match="extra"):
        trainer.add_component(Disabled("extra"))


def event(step: int, lr_mul: float = 1.0, frac: float = 0.0, warmdown_mul: float = 1.0) -> StepEvent:
    return StepEvent(step=step, lr_mul=lr_mul, warmdown_mul=warmdown_mul, frac=frac, elapsed_s=0.0)


def test_switch_fires_once_and_follows_restores() -> None:
    calls: list[bool] = []
    switch = SwitchAtThreshold("looping", calls.append, at_frac=0.5)
    switch.update(event(1, frac=0.2))
    saved = switch.state_dict()
    switch.update(event(2, frac=0.5))
    switch.update(event(3, frac=0.7))
    assert calls == [True] and switch.state_dict() == {"fired": True, "fired_at_step": 2}
    fired = switch.state_dict()
    switch.load_state_dict(saved)  # e.g. the warm-up undo: the model goes back to the old path
    assert calls == [True, False] and not switch.fired
    switch.load_state_dict(fired)  # e.g. a resume after the switch: the model takes the new path again
    assert calls == [True, False, True]
    by_lr = SwitchAtThreshold("qat", calls.append, below_lr_mul=0.15)
    by_lr.update(event(1, lr_mul=0.2))
    by_lr.update(event(2, lr_mul=0.1))
    assert by_lr.fired_at_step == 2
    with pytest.raises(ValueError):
        SwitchAtThreshold("bad", calls.append)
