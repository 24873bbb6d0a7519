"""The new training paths keep every collective on the run's device and make no device-less tensors:
the sharded Muon all-gather, the (stop, checkpoint) flags, checkpoint writes, EMA/SWA, sensitivity
statistics and the shuffled loader, checked with the interception of tests/test_devices.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as tdist

from helpers_train import CPU, one_thread, tiny_cfg, write_random_shards  # noqa: F401  (one_thread: autouse)
from pgolf.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta
from pgolf.components import build_components
from pgolf.runlog import RunLogger
from pgolf.train import Trainer, train
from test_devices import Collectives, DevicelessFactoriesGoToMeta


class Done:
    def wait(self) -> None:
        pass


def test_new_training_paths_use_only_run_device_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(write_random_shards(tmp_path / "shards"), iterations=4, warmup=1)
    o, t = cfg.optim, cfg.train
    o.muon_sharded, o.muon_batched, o.muon_row_normalize, o.muon_wd = True, True, True, 0.01
    t.ema_decay, t.swa_every, t.swa_lr_threshold, t.sensitivity_frac = 0.9, 1, 0.9, 1.0
    t.data_order, t.checkpoint_every_seconds = "shuffled", 1e-9
    trainer = Trainer(cfg, CPU)
    seen = Collectives(monkeypatch)

    def gather(output: torch.Tensor, local: torch.Tensor, *args: Any, **kwargs: Any) -> Done:
        seen.seen.append(("all_gather_single", output.device))
        seen.seen.append(("all_gather_single", local.device))
        output.copy_(local)  # a world of one
        return Done()

    monkeypatch.setattr(tdist, "all_gather_single", gather, raising=False)
    with DevicelessFactoriesGoToMeta():
        # The model is built outside (its init makes host tensors and moves them); components inside.
        trainer.components = build_components(cfg, trainer.model)
        result = train(cfg, CPU, RunLogger(tmp_path / "run", echo=False), trainer=trainer)
    assert result.steps == 4 and result.export_source == "ema" and result.sensitivity
    assert {name for name, _ in seen.seen} >= {"all_reduce", "all_gather_single"}
    assert all(device == CPU.device for _, device in seen.seen), seen.seen
    assert read_checkpoint_meta(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 4
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
