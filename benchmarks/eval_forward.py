"""One sliding-window scoring forward of a preset's model, timed several ways, printed as one JSON object.

The forward `pgolf.eval.sliding.token_nll` runs for a batch of windows that score their last `stride`
columns (the stride-64 evaluation's steady batch), with random weights and tokens: its speed does not
depend on training. Variants, alternating over `--rounds` so a slow minute of the machine hits them all:

- `eager`: no compilation.
- `compiled`: torch.compile of the whole forward, as `eval.compile` ships it.
- `math`: compiled, with the model's explicit matmul-softmax attention instead of the CPU flash kernel.
- `regional`: each block compiled on its own (one trace per distinct block instead of the whole graph).
- `threads`: compiled, one intra-op thread, the batch's two halves on two Python threads at once.

Each variant reports its compile seconds (the first call, from whatever inductor cache the machine has)
and ms per forward; all must agree with eager (to 1e-4 nats in float32, 5e-2 in bfloat16). The
dtype is the preset's eval.dtype unless --dtype says otherwise. Environment settings of the OpenMP runtime
(e.g. OMP_WAIT_POLICY) apply to the whole process: compare them by running the benchmark twice.

    python benchmarks/eval_forward.py --preset cpu-baseline [--windows 8] [--stride 64] [--rounds 3]
        [--variants eager,compiled,math,regional,threads] [--backend inductor] [--dtype float32] [--out F]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from jsonout import emit

from pgolf.dist import use_bf16
from pgolf.eval.sliding import token_nll
from pgolf.model.gpt import GPT
from pgolf.presets import get_preset
from pgolf.scoring import COMPILE_BACKEND

VARIANTS = ("eager", "compiled", "math", "regional", "threads")
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def nll(model: GPT, x: torch.Tensor, y: torch.Tensor, col0: int, bf16: bool) -> torch.Tensor:
    """The scored columns' nll in the evaluation's dtype (bfloat16 autocast or float32)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return token_nll(model, x, y, col0)


def build(variant: str, model: GPT, math_model: GPT, col0: int, seq_len: int, pool: ThreadPoolExecutor,
          backend: str, bf16: bool) -> Forward:
    """The forward of one variant: (x, y) (B, T) -> nll (B, T - col0). Each compiled variant compiles a
    function of its own: dynamo keeps its compilations per function, and variants sharing one would evict
    each other's and recompile on every call."""
    if variant == "eager":
        return lambda x, y: nll(model, x, y, col0, bf16)
    if variant == "compiled":
        def whole(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nll(model, x, y, col0, bf16)
        return torch.compile(whole, dynamic=False, backend=backend)
    if variant == "math":
        def with_math(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nll(math_model, x, y, col0, bf16)
        return torch.compile(with_math, dynamic=False, backend=backend)
    if variant == "threads":
        def half(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nll(model, x, y, col0, bf16)
        fn = torch.compile(half, dynamic=False, backend=backend)

        def in_worker(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():  # the mode is per thread
                return fn(x, y)

        def halves(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            h = x.shape[0] // 2
            parts = [pool.submit(in_worker, x[:h], y[:h]), pool.submit(in_worker, x[h:], y[h:])]
            return torch.cat([p.result() for p in parts])
        return halves
    assert variant == "regional"
    regional = GPT(model.cfg, model.attn_backend).eval()
    regional.load_state_dict(model.state_dict())
    regional.grow_rope(seq_len)
    for block in regional.blocks:
        block.compile(dynamic=False, backend=backend)
    return lambda x, y: nll(regional, x, y, col0, bf16)


def run(preset: str, windows: int, stride: int, rounds: int, repeats: int, variants: list[str],
        backend: str = COMPILE_BACKEND, dtype: str = "") -> dict:
    run_cfg = get_preset(preset)
    cfg, seq_len = run_cfg.model, run_cfg.eval_seq_len
    if not 0 < stride <= seq_len:
        raise SystemExit(f"--stride {stride} must be in 1..{seq_len} (the preset's evaluation length)")
    bf16 = use_bf16(dtype or run_cfg.eval.dtype, torch.device("cpu"))
    tolerance = 5e-2 if bf16 else 1e-4  # nats; bfloat16 rounds differently along each path
    col0 = seq_len - stride
    torch.manual_seed(0)
    model = GPT(cfg, "sdpa").eval()
    for p in model.parameters():  # random weights of a trained model's scale (a fresh model's heads are zero)
        torch.nn.init.normal_(p, std=0.05)
    math_model = GPT(cfg, "math").eval()
    math_model.load_state_dict(model.state_dict())
    for m in (model, math_model):  # tables built outside inference mode: compiled calls never rebuild them
        m.grow_rope(seq_len)
    x = torch.randint(0, cfg.vocab_size, (windows, seq_len))
    y = torch.randint(0, cfg.vocab_size, (windows, seq_len))
    pool = ThreadPoolExecutor(2)
    threads = torch.get_num_threads()
    fns: dict[str, Forward] = {}
    compile_s: dict[str, float] = {}
    max_diff: dict[str, float] = {}
    ms: dict[str, list[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        reference = nll(model, x, y, col0, bf16).float()
        for v in variants:
            fns[v] = build(v, model, math_model, col0, seq_len, pool, backend, bf16)
            torch.set_num_threads(1 if v == "threads" else threads)
            t0 = time.perf_counter()
            out = fns[v](x, y)
            compile_s[v] = time.perf_counter() - t0
            max_diff[v] = float((out.float() - reference).abs().max())
        for _ in range(rounds):
            for v in variants:
                torch.set_num_threads(1 if v == "threads" else threads)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fns[v](x, y)
                ms[v].append((time.perf_counter() - t0) / repeats * 1000)
    torch.set_num_threads(threads)
    bad = {v: d for v, d in max_diff.items() if d > tolerance}
    if bad:
        raise SystemExit(f"variants disagree with eager: {bad}")
    return {"benchmark": "eval_forward", "preset": preset, "windows": windows, "seq_len": seq_len, "stride": stride,
            "threads": threads, "bf16": bf16, "backend": backend,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "rounds": rounds, "repeats": repeats, "ms_per_forward": ms, "median_ms": {v: statistics.median(t) for v, t in ms.items()},
            "compile_s": compile_s, "max_abs_diff_vs_eager": max_diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu-baseline")
    p.add_argument("--windows", type=int, default=8, help="windows per forward (eval.batch_tokens / seq_len)")
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20, help="forwards per timed round")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--backend", default=COMPILE_BACKEND, help=f"torch.compile backend (default: {COMPILE_BACKEND}, "
                                                               "as eval.compile uses)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="",
                   help="the forward's dtype (default: the preset's eval.dtype; auto = bfloat16 where native)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise SystemExit(f"--variants: {unknown or 'none given'}; choose from {','.join(VARIANTS)}")
    emit(run(a.preset, max(2, a.windows), a.stride, max(1, a.rounds), max(1, a.repeats), variants, a.backend, a.dtype), a.out)


if __name__ == "__main__":
    main()
