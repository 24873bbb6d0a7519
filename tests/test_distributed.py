"""Ranks and devices: a rank without a GPU of its own is one line naming the flag. (That a 2-process
torchrun/gloo run reaches the same losses as one process is checked on the shipped script, in
tests/test_bundle.py.)"""

from __future__ import annotations

import pytest
import torch

from pgolf import dist
from pgolf.errors import UserError


def test_more_ranks_than_gpus_is_one_line_naming_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # what torchrun --nproc_per_node=2 on a one-GPU machine gives rank 1 (measured on an H200: torch's
    # "invalid device ordinal" traceback); the check runs before any CUDA call
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: pytest.fail("set_device reached"))
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=r"local rank 1 but only 1 CUDA device.*--nproc_per_node=1"):
        dist.init()
