"""Process-group helpers: rank and world from the torchrun environment, gloo on CPU, nccl on CUDA.

Every reduction is a no-op at world size 1, so call sites never branch on `distributed`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pgolf.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on this host, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) for a plain process."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world_size, local_rank


def init(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun, join the process group (nccl on CUDA, gloo on CPU)."""
    rank, world_size, local_rank = read_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda and local_rank >= (visible := torch.cuda.device_count()):
        # torch's own error here is a CUDA traceback ("invalid device ordinal") from every extra rank
        raise UserError(f"torchrun started local rank {local_rank} but only {visible} CUDA device(s) are visible: "
                        f"use --nproc_per_node={visible} or fewer (or CUDA_VISIBLE_DEVICES= to run every process "
                        f"on the CPU with gloo)")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


@functools.lru_cache(maxsize=None)
def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively: always on CUDA; on a CPU only with AVX512-BF16 or AMX
    (elsewhere they are emulated and far slower than float32)."""
    if device.type == "cuda":
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: str, device: torch.device) -> bool:
    """Resolve a `dtype` setting ("auto", "bfloat16", "float32") to whether bf16 is used on `device`."""
    return setting == "bfloat16" or (setting == "auto" and native_bf16(device))


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process)."""
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """In-place max over ranks (no-op on one process)."""
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_avg_(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (no-op on one process)."""
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from `src` (no-op on one process)."""
    if is_active():
        dist.broadcast(t, src=src)
    return t


def broadcast_text(text: str, device: torch.device, max_bytes: int = 255) -> str:
    """Rank 0's string on every rank (no-op on one process); at most `max_bytes` of UTF-8."""
    if not is_active():
        return text
    buf = torch.zeros(max_bytes + 1, dtype=torch.uint8, device=device)
    raw = text.encode("utf-8")[:max_bytes]
    buf[0] = len(raw)
    buf[1:1 + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    return bytes(buf[1:1 + int(buf[0])].tolist()).decode("utf-8")


def barrier() -> None:
    if is_active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group once every rank is done (rank 0 may still be writing files; a rank that
    tears down while a peer is busy can abort it). If a rank failed, torchrun stops the others."""
    if dist.is_available() and dist.is_initialized():
        if is_active():
            dist.barrier()
        dist.destroy_process_group()


def all_gather_async(local: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start gathering every rank's `local` (same shape everywhere) into one tensor stacked along dim 0 in
    rank order; returns (output, work handle to `wait()` on before reading it). On one process: (local, None)."""
    if not is_active():
        return local, None
    out = torch.empty((dist.get_world_size() * local.shape[0], *local.shape[1:]), dtype=local.dtype,
                      device=local.device)
    # torch >= 2.10 names it all_gather_single; older releases (the records' 2.9) all_gather_into_tensor.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return out, gather(out, local.contiguous(), async_op=True)
