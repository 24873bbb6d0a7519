"""Causal attention forward + backward at a preset's training shape, per backend, printed as one JSON object.

The model calls `F.scaled_dot_product_attention` (causal, grouped K/V). On a CPU, PyTorch picks its
flash kernel; this times that call against the same call forced to the math backend and against an
explicit q @ k^T, masked softmax, @ v, at the shape one layer sees in training (micro-batch sequences,
query and K/V heads, sequence length, head dim), and checks that all three agree.

    python benchmarks/attention.py --preset cpu-record-tuned [--repeats 20] [--out F]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from jsonout import emit
from pgolf.dist import use_bf16
from pgolf.presets import get_preset


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return sdpa(q, k, v)


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Grouped causal attention as matmuls: query heads of a group share their K/V head (no repeat)."""
    b, h, t, d = q.shape
    g = h // k.shape[1]
    qg = q.view(b, k.shape[1], g * t, d)  # the g query heads of a K/V head stacked along time
    scores = (qg @ k.transpose(-1, -2)).view(b, k.shape[1], g, t, t) * d**-0.5
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill(mask, float("-inf")).softmax(-1).view(b, k.shape[1], g * t, t)
    return (probs @ v).view(b, h, t, d)


BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sdpa_default": sdpa, "sdpa_math": sdpa_math, "explicit": explicit}


def time_backend(fn: Callable[..., torch.Tensor], shape_q: tuple[int, ...], shape_kv: tuple[int, ...],
                 dtype: torch.dtype, repeats: int) -> float:
    """Mean seconds of one forward + backward."""
    q = torch.randn(shape_q, dtype=dtype, requires_grad=True)
    k = torch.randn(shape_kv, dtype=dtype, requires_grad=True)
    v = torch.randn(shape_kv, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape_q, dtype=dtype)
    for _ in range(2):
        fn(q, k, v).backward(grad)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(q, k, v).backward(grad)
    return (time.perf_counter() - t0) / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-record-tuned")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    cfg = get_preset(a.preset)
    m, tc = cfg.model, cfg.train
    batch = tc.train_batch_tokens // tc.grad_accum_steps // tc.train_seq_len
    head_dim = m.model_dim // m.num_heads
    shape_q = (batch, m.num_heads, tc.train_seq_len, head_dim)
    shape_kv = (batch, m.num_kv_heads, tc.train_seq_len, head_dim)
    dtype = torch.bfloat16 if use_bf16(tc.dtype, torch.device("cpu")) else torch.float32
    torch.manual_seed(0)
    q, k, v = (torch.randn(s, dtype=torch.float64) for s in (shape_q, shape_kv, shape_kv))
    reference = sdpa_math(q, k, v)
    max_diff = {name: float((fn(q, k, v) - reference).abs().max()) for name, fn in BACKENDS.items()}
    seconds = {name: time_backend(fn, shape_q, shape_kv, dtype, a.repeats) for name, fn in BACKENDS.items()}
    fastest = min(seconds, key=seconds.__getitem__)
    emit({
        "benchmark": "attention",
        "preset": a.preset,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "q_shape": list(shape_q), "kv_shape": list(shape_kv),
        "ms_fwd_bwd": {name: 1000 * s for name, s in seconds.items()},
        "ms_per_step_all_layers": {name: 1000 * s * m.num_layers * tc.grad_accum_steps for name, s in seconds.items()},
        "fastest": fastest,
        "max_abs_diff_vs_math_fp64": max_diff,
    }, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
