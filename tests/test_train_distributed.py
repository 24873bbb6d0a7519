"""Two gloo processes under torchrun (tests/dist_worker.py): sharded Muon on 2 ranks equals 1 process
and leaves identical optimiser state on both ranks; and when a rank dies mid-training the whole job
ends within 60 s instead of hanging in a collective (torchrun stops the surviving rank)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dist_worker import muon_run
from helpers_train import one_thread, write_random_shards  # noqa: F401  (one_thread: autouse)

WORKER = Path(__file__).resolve().parent / "dist_worker.py"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, float]:
    out = tmp_path_factory.mktemp("dist")
    shards = write_random_shards(out / "shards")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(out), str(shards)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return out, proc, time.time()


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("batched", [False, True])
def test_two_process_sharded_muon_equals_one_process(job: tuple[Path, subprocess.CompletedProcess, float],
                                                     batched: bool) -> None:
    out, proc, _ = job
    ranks = [out / f"muon_b{int(batched)}_rank{r}.safetensors" for r in range(2)]
    assert all(p.exists() for p in ranks), proc.stderr[-3000:]
    params, buffers = muon_run(batched)
    rank0, rank1 = load(ranks[0]), load(ranks[1])
    for i, (p, m) in enumerate(zip(params, buffers)):
        torch.testing.assert_close(rank0[f"p{i}"], p, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rank0[f"m{i}"], m, rtol=1e-5, atol=1e-6)
        # every rank applies the gathered updates and advances every buffer: identical state everywhere
        assert torch.equal(rank0[f"p{i}"], rank1[f"p{i}"]) and torch.equal(rank0[f"m{i}"], rank1[f"m{i}"])


def test_a_dead_rank_ends_the_job_within_60_seconds(job: tuple[Path, subprocess.CompletedProcess, float]) -> None:
    out, proc, ended = job
    assert (out / "killed_at.txt").exists(), proc.stderr[-3000:]
    killed = float((out / "killed_at.txt").read_text())
    assert proc.returncode != 0
    assert ended - killed < 60.0, f"the job took {ended - killed:.1f} s to end after rank 1 died"
