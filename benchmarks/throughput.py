"""Training and evaluation throughput of a preset's model on this machine, printed as one JSON object.

Reports training tokens/s, evaluation tokens/s, peak memory, and the model FLOP utilisation (MFU)
against the matmul throughput of the compute dtype measured in the same run: the best of a sweep of
square sizes run before and again after the model's benches (so the ratio is machine-relative and a
slow minute cannot flatter it). Model FLOPs per token follow the PaLM appendix count: 6 x (matmul
parameters, the output head included) + 12 x layers x model_dim x seq_len for attention.

    python benchmarks/throughput.py [--preset cpu-baseline] [--flags "--optim.muon_batched True ..."] [--steps 20]
        [--eager] [--out benchmarks/results/x.json]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from pgolf.config import RunConfig
from pgolf.dist import use_bf16
from jsonout import emit
from pgolf.model.gpt import GPT
from pgolf.model.roles import param_roles
from pgolf.optim.groups import build_optimizers
from pgolf.optim.schedule import apply_lr
from pgolf.presets import get_preset
from pgolf.runlog import cpu_model, peak_memory_bytes
from pgolf.verbargs import parse_config


def matmul_peak(sizes: list[int], dtype: torch.dtype, device: torch.device, seconds: float) -> dict[str, float]:
    """The best sustained matmul rate over a sweep of square sizes (n -> FLOP/s, and "peak")."""
    rates = {str(n): matmul_flops_per_second(n, dtype, device, seconds) for n in sizes}
    return {**rates, "peak": max(rates.values())}


def matmul_flops_per_second(n: int, dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """Sustained throughput of an n x n x n matmul in `dtype`, timed for about `seconds`."""
    return time_matmul((n, n), (n, n), dtype, device, seconds)


def time_matmul(a_shape: tuple[int, ...], b_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                seconds: float = 2.0) -> float:
    """FLOP/s of `a @ b` for operands of these shapes (2-D, or batched 3-D), timed for about `seconds`."""
    a = torch.randn(a_shape, device=device).to(dtype)
    b = torch.randn(b_shape, device=device).to(dtype)
    flops = 2.0 * a.numel() * b_shape[-1]
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return flops * reps / (time.perf_counter() - t0)


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward)."""
    cfg = model.cfg
    roles = param_roles(model)
    matmul = sum(p.numel() for name, p in model.named_parameters() if roles[name] in ("matrix", "head", "gate"))
    matmul += cfg.vocab_size * cfg.model_dim  # the (tied) output head is a matmul too
    return 6.0 * matmul + 12.0 * cfg.num_layers * cfg.model_dim * seq_len


def bench_train(cfg: RunConfig, steps: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    opts = build_optimizers(model, cfg.optim)
    # Train as `pgolf train` does: compiled when the preset compiles (the two untimed steps absorb
    # the compilation), evaluation uncompiled.
    run_model = torch.compile(model, dynamic=False) if cfg.train.compile else model
    apply_lr(opts, 1.0, cfg.optim.muon_momentum)
    tc = cfg.train
    micro = tc.train_batch_tokens // tc.grad_accum_steps
    x = torch.randint(0, cfg.model.vocab_size, (micro // tc.train_seq_len, tc.train_seq_len), device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(tc.dtype, device))

    def one_step() -> None:
        for _ in range(tc.grad_accum_steps):
            with ctx:
                loss = run_model(x, x)
            (loss / tc.grad_accum_steps).backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    for _ in range(2):
        one_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    seconds = time.perf_counter() - t0
    tokens_per_s = steps * tc.train_batch_tokens / seconds
    return {"train_tokens_per_s": tokens_per_s, "train_step_ms": 1000 * seconds / steps,
            "flops_per_token": flops_per_token(model, tc.train_seq_len), "num_parameters": sum(p.numel() for p in model.parameters())}


def bench_eval(cfg: RunConfig, device: torch.device, min_tokens: int = 65_536) -> tuple[float, float]:
    """(standard-evaluation tokens/s, compile seconds): forwards of eval.batch_tokens, at least 5 and
    `min_tokens` in all, compiled as eval.compile says (the first call, with the compilation, untimed)."""
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device).eval()
    seq = cfg.eval_seq_len
    n_seq = max(cfg.eval.batch_tokens // seq, 1)
    batches = max(5, -(-min_tokens // (n_seq * seq)))
    x = torch.randint(0, cfg.model.vocab_size, (n_seq, seq), device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.eval.dtype, device))
    nll = torch.compile(model.per_token_nll, dynamic=False) if cfg.eval.compile else model.per_token_nll
    with torch.inference_mode(), ctx:
        model.per_token_nll(x, x)  # eager first, as the evaluators do: lazy state (RoPE tables) settles
        t0 = time.perf_counter()
        nll(x, x)
        compile_s = time.perf_counter() - t0 if cfg.eval.compile else 0.0
        t0 = time.perf_counter()
        for _ in range(batches):
            nll(x, x)
    return batches * n_seq * seq / (time.perf_counter() - t0), compile_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-baseline")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--matmul-sizes", default="256,512,1024,2048", help="square matmul sizes of the peak sweep")
    ap.add_argument("--out", default="")
    ap.add_argument("--eager", action="store_true", help="do not compile even if the preset does")
    ap.add_argument("--flags", default="", help="pgolf flags applied to the preset (e.g. \"--optim.muon_batched True\")")
    a = ap.parse_args()
    cfg = parse_config(shlex.split(a.flags), get_preset(a.preset), "throughput.py")
    if a.eager:
        cfg.train.compile = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if use_bf16(cfg.train.dtype, device) else torch.float32
    sizes = [int(n) for n in a.matmul_sizes.split(",")]
    # the sweep before and after the model's benches: a slow minute of a shared machine cannot lower the peak
    sweep = matmul_peak(sizes, dtype, device, seconds=0.5)
    train = bench_train(cfg, a.steps, device)
    eval_tps, eval_compile_s = bench_eval(cfg, device)
    sweep_after = matmul_peak(sizes, dtype, device, seconds=0.5)
    peak = max(sweep["peak"], sweep_after["peak"])
    achieved = train["train_tokens_per_s"] * train["flops_per_token"]
    result = {
        "benchmark": "throughput",
        "preset": a.preset,
        "flags": a.flags,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "compile": cfg.train.compile,
        **train,
        "eval_compile": cfg.eval.compile,
        "eval_compile_s": eval_compile_s,
        "eval_tokens_per_s": eval_tps,
        "eval_over_train": eval_tps / train["train_tokens_per_s"],
        "peak_memory_bytes": peak_memory_bytes(device),
        "matmul_peak_flops": peak,
        "matmul_sweep_flops": sweep,
        "matmul_sweep_after_flops": sweep_after,
        "achieved_flops": achieved,
        "mfu": achieved / peak,
    }
    emit(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
