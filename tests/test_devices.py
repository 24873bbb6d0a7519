"""What only a GPU run would show, caught on the CPU: every tensor handed to a collective lives on the
run's device (nccl reduces CUDA tensors only), and no tensor the training loop makes is left on the
default device by a factory call that forgot `device=`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from torch.overrides import TorchFunctionMode

import pgolf
from pgolf import dist
from pgolf.data.shards import shard_name, write_shard
from pgolf.dist import DistInfo
from pgolf.presets import get_preset
from pgolf.runlog import RunLogger
from pgolf.train import Trainer, should_stop, train

PGOLF_DIR = str(Path(pgolf.__file__).resolve().parent)
FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.randn,
             torch.rand, torch.randint, torch.linspace, torch.eye}


def called_from_pgolf() -> bool:
    """Whether the factory call was written in pgolf's own code: its nearest caller outside this test and
    torch's dispatch machinery is a pgolf file. Factories inside torch (an optimiser's step counter, say)
    belong to torch even when pgolf called into it, and torch versions differ in how they make them."""
    frame = inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_filename
        if name != __file__ and not name.endswith(("/torch/overrides.py", "/torch/utils/_python_dispatch.py")):
            return name.startswith(PGOLF_DIR)
        frame = frame.f_back
    return False


class DevicelessFactoriesGoToMeta(TorchFunctionMode):
    """A factory call in pgolf code without `device=` makes a meta tensor: on a GPU it would have
    silently landed on the CPU; here it cannot be computed with or reduced without failing."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in FACTORIES and "device" not in kwargs and called_from_pgolf():
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


class Collectives:
    """Stands in for a process group of one: records every tensor a collective receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, torch.device]] = []
        for name in ("all_reduce", "broadcast", "reduce_scatter_tensor", "all_gather_into_tensor"):
            monkeypatch.setattr(tdist, name, self._record(name))
        monkeypatch.setattr(tdist, "barrier", lambda *a, **k: None)
        monkeypatch.setattr(tdist, "get_world_size", lambda *a, **k: 1)
        monkeypatch.setattr(tdist, "get_rank", lambda *a, **k: 0)
        monkeypatch.setattr(dist, "is_active", lambda: True)

    def _record(self, name: str) -> Any:
        def collective(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self.seen.append((name, tensor.device))
            for t in args:
                if isinstance(t, torch.Tensor):
                    self.seen.append((name, t.device))
        return collective


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_shard(tmp_path / shard_name("train", 0), rng.integers(0, 512, 40_000))
    return tmp_path


def test_should_stop_reduces_on_the_run_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Collectives(monkeypatch)
    with DevicelessFactoriesGoToMeta():
        assert should_stop(5.0, 1.0, torch.device("cpu")) is True
    assert seen.seen == [("all_reduce", torch.device("cpu"))]


def test_training_loop_hands_collectives_only_run_device_tensors(shard_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    cfg = get_preset("test-tiny")
    cfg.data.dataset_dir = str(shard_dir)
    cfg.train.iterations, cfg.train.warmup_steps, cfg.train.val_loss_every = 3, 1, 0
    cfg.train.max_wallclock_seconds = 1e6
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    trainer = Trainer(cfg, info)
    seen = Collectives(monkeypatch)
    with DevicelessFactoriesGoToMeta():
        result = train(cfg, info, RunLogger(None, echo=False), trainer=trainer)
    assert result.steps == 3
    assert seen.seen, "the loop made no collective call; the interception is not wired"
    assert {name for name, _ in seen.seen} >= {"all_reduce"}
    assert all(device == info.device for _, device in seen.seen), seen.seen
    assert all(torch.isfinite(p).all() and p.device == info.device for p in trainer.model.parameters())
