"""Run under `torchrun --nproc_per_node=2` (gloo) by tests/test_train_distributed.py; two phases:

1. `muon`: the same parameters and per-step gradients on every rank, N steps of sharded Muon; each
   rank writes its parameters and momentum buffers (rank-r file) for comparison with one process.
2. `die`: the real training loop (DDP over gloo) on random shards; rank 1 writes the time and kills
   itself with SIGKILL inside step 3, leaving rank 0 inside a collective. torchrun must end the job.

usage: python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py OUT SHARDS
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_train import tiny_cfg  # noqa: E402
from pgolf import dist  # noqa: E402
from pgolf.components import Component, StepEvent  # noqa: E402
from pgolf.optim.muon import Muon  # noqa: E402
from pgolf.runlog import RunLogger  # noqa: E402
from pgolf.train import Trainer, train  # noqa: E402

MUON_STEPS = 4
SHAPES = [(32, 16), (16, 32), (32, 16), (24, 24), (32, 16), (16, 32), (24, 24)]


def muon_run(batched: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(parameters, momentum buffers) after MUON_STEPS sharded steps on fixed gradients."""
    params = [torch.nn.Parameter(torch.randn(*s, generator=torch.Generator().manual_seed(i)))
              for i, s in enumerate(SHAPES)]
    opt = Muon(params, lr=0.05, momentum=0.9, backend_steps=5, ns_dtype=torch.float32, sharded=True,
               batched=batched, row_normalize=True)
    for step in range(MUON_STEPS):
        for i, p in enumerate(params):
            p.grad = torch.randn(*p.shape, generator=torch.Generator().manual_seed(1000 * step + i))
        opt.step()
    return [p.detach().clone() for p in params], [opt.state[p]["momentum_buffer"].clone() for p in params]


class DieAt(Component):
    """Rank 1 records the time and SIGKILLs itself inside step `at`."""

    name = "die_at"

    def __init__(self, rank: int, at: int, out: Path) -> None:
        self.rank, self.at, self.out = rank, at, out

    def update(self, event: StepEvent) -> None:
        if self.rank == 1 and event.step == self.at:
            (self.out / "killed_at.txt").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    from safetensors.torch import save_file

    out, shards = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    info = dist.init("cpu")
    for batched in (False, True):
        params, buffers = muon_run(batched)
        tensors = {**{f"p{i}": p for i, p in enumerate(params)}, **{f"m{i}": m for i, m in enumerate(buffers)}}
        save_file(tensors, str(out / f"muon_b{int(batched)}_rank{info.rank}.safetensors"))
    dist.barrier()
    cfg = tiny_cfg(shards, iterations=1_000_000, warmup=0)
    trainer = Trainer(cfg, info)
    trainer.add_component(DieAt(info.rank, 3, out))
    train(cfg, info, RunLogger(None, is_main=info.is_main, echo=False), trainer=trainer)


if __name__ == "__main__":
    main()
