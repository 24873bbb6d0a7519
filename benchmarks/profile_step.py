"""Where a training step's time goes on this machine, printed as one JSON object.

The numbers the speed targets name, for one preset as `pgolf train` runs it (the real Trainer, loader and
optimisers): start-up from process start to the end of the first step (compilation, when the preset
compiles, reported apart and excluded), the loader's share of step time, peak memory, a torch.profiler
table of the ops that take the time per step (self time, grouped into matmul, attention, the optimiser
and the rest), and the matmul FLOP rate at the shapes the model actually multiplies, inside the step and
alone, beside the best rate of a square sweep measured in the same run. Together they say where the
machine's matmul peak is lost. With compilation on, the inductor's FX-graph cache hits and misses are
reported: a second run of the same preset shows the cache at work.

With `--eval-strides`, the same for evaluation forwards of the preset's model (eval.batch_tokens windows of
eval seq_len, scored from column seq_len - stride as the sliding evaluator scores them; random weights),
eager and, with `--eval-compiled`, under eval.compile: tokens scored per second and self time by group.

Training data: the preset's prepared shards when they exist, else random tokens written to a temporary
folder (the JSON says which; the speed of a step does not depend on the token values).

    python benchmarks/profile_step.py --preset cpu-record-tuned [--steps 20] [--profile-steps 5] [--eager]
        [--eval-strides 256,64 [--eval-compiled] [--eval-batches 8]] [--out F]
"""

from __future__ import annotations

import time

T_IMPORT = time.perf_counter()  # before torch is imported: start-up counts the imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from pgolf.config import RunConfig  # noqa: E402
from pgolf.data.shards import MissingShardsError, list_shards, shard_name, write_shard  # noqa: E402
from pgolf.dist import DistInfo, use_bf16  # noqa: E402
from pgolf.eval.sliding import token_nll  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.presets import get_preset  # noqa: E402
from pgolf.runlog import cpu_model, peak_memory_bytes  # noqa: E402
from pgolf.train import Trainer, _sync  # noqa: E402

from jsonout import emit  # noqa: E402
from throughput import matmul_peak, time_matmul  # noqa: E402

T_IMPORTED = time.perf_counter()

# Positions of the two matrix operands in a matmul op's recorded input shapes (an `out=` tensor or
# scalars may follow them; addmm and baddbmm take the bias first).
OPERANDS = {"aten::mm": (0, 1), "aten::bmm": (0, 1), "aten::addmm": (1, 2), "aten::_addmm_activation": (1, 2),
            "aten::baddbmm": (1, 2)}
MATMUL_OPS = tuple(OPERANDS)


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc), so start-up includes the interpreter; 0 elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def category(name: str) -> str:
    """The group of a profiler event: matmul, attention, optimizer (Python around the optimiser's ops),
    region (Python around a step's ops), or other (elementwise, norms, copies, reductions...)."""
    if name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name.startswith("Optimizer."):
        return "optimizer"
    if not name.startswith("aten::") and not name.startswith("pgolf::"):
        return "region"
    return "other"


def matmul_operands(name: str, shapes: list[list[int]]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The (a, b) operand shapes of one matmul call, or None when the recorded shapes are not a matmul's."""
    if name not in OPERANDS or len(shapes) <= max(OPERANDS[name]):
        return None
    a, b = (tuple(shapes[i]) for i in OPERANDS[name])
    rank = 3 if name in ("aten::bmm", "aten::baddbmm") else 2
    if len(a) != rank or len(b) != rank or a[-1] != b[-2] or a[:-2] != b[:-2]:
        return None
    return a, b


def matmul_flops(name: str, shapes: list[list[int]]) -> float:
    """FLOPs of one matmul call from its input shapes (0 when the shapes are not what the op takes)."""
    operands = matmul_operands(name, shapes)
    if operands is None:
        return 0.0
    a, b = operands
    return 2.0 * float(np.prod(a)) * b[-1]


def with_data(cfg: RunConfig, tmp: Path) -> tuple[RunConfig, str]:
    """The config with shards to train on: its prepared ones, else random tokens in `tmp`."""
    try:
        list_shards(cfg.dataset_dir, "train")
        return cfg, f"prepared shards in {cfg.dataset_dir}"
    except MissingShardsError:
        pass
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.model.vocab_size, size=2_000_000, dtype=np.int64).astype(np.uint16)
    tokens[::512] = 1  # a document boundary every 512 tokens, for loaders and techniques that look for them
    write_shard(tmp / shard_name("train", 0), tokens)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(tmp))), "random tokens"


def inductor_counters() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {k: int(v) for k, v in counters["inductor"].items() if "cache" in k}


def run_steps(trainer: Trainer, first: int, count: int) -> float:
    """Seconds for `count` optimiser steps from step `first`, synchronised as `pgolf train` times them."""
    t0 = time.perf_counter()
    for step in range(first, first + count):
        trainer.step(step, trainer.schedule(step, 0.0))
        _sync(trainer.info.device)
    return time.perf_counter() - t0


def profile_steps(trainer: Trainer, first: int, count: int, dtype: torch.dtype) -> dict[str, Any]:
    """Self time per step by op and by group over `count` profiled steps, and the model's matmul shapes."""
    micro = trainer._micro_step

    def labelled(is_last: bool) -> torch.Tensor:
        with record_function("forward+backward"):
            return micro(is_last)

    trainer._micro_step = labelled  # type: ignore[method-assign]
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            wall = run_steps(trainer, first, count)
    finally:
        del trainer._micro_step
    per_op: dict[str, dict[str, float]] = defaultdict(lambda: {"self_ms": 0.0, "calls": 0.0})
    groups: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = {}
    shapes: dict[tuple[Any, ...], dict[str, float]] = defaultdict(lambda: {"self_ms": 0.0, "calls": 0.0, "flops": 0.0})
    for ev in prof.key_averages(group_by_input_shape=True):
        self_ms = ev.self_cpu_time_total / 1000.0
        per_op[ev.key]["self_ms"] += self_ms
        per_op[ev.key]["calls"] += ev.count
        groups[category(ev.key)] += self_ms
        if category(ev.key) in ("region", "optimizer"):
            inclusive[ev.key] = inclusive.get(ev.key, 0.0) + ev.cpu_time_total / 1000.0
        if ev.key in MATMUL_OPS:
            operands = matmul_operands(ev.key, ev.input_shapes)
            if operands is not None:
                entry = shapes[(ev.key, *operands)]
                entry["self_ms"] += self_ms
                entry["calls"] += ev.count
                entry["flops"] += matmul_flops(ev.key, ev.input_shapes) * ev.count
    wall_ms = 1000.0 * wall / count
    traced = sum(groups.values()) / count
    top = sorted(per_op.items(), key=lambda kv: -kv[1]["self_ms"])[:15]
    shape_rows = []
    for (op, a_shape, b_shape), e in sorted(shapes.items(), key=lambda kv: -kv[1]["self_ms"])[:12]:
        in_step = e["flops"] / (e["self_ms"] / 1000.0) if e["self_ms"] > 0 else 0.0
        alone = time_matmul(a_shape, b_shape, dtype, torch.device("cpu"), 0.2)
        shape_rows.append({"op": op, "a": list(a_shape), "b": list(b_shape), "calls_per_step": e["calls"] / count,
                           "ms_per_step": e["self_ms"] / count, "flops_per_s_in_step": in_step,
                           "flops_per_s_alone": alone})
    matmul_ms = groups["matmul"] / count
    matmul_flops_step = sum(e["flops"] for e in shapes.values()) / count
    return {
        "wall_ms_per_step": wall_ms,
        "self_ms_per_step": {g: v / count for g, v in sorted(groups.items())},
        "share_of_wall": {g: v / count / wall_ms for g, v in sorted(groups.items())},
        "untraced_ms_per_step": wall_ms - traced,
        "inclusive_ms_per_step": {k: v / count for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:8]},
        "top_ops": [{"op": k, "self_ms_per_step": v["self_ms"] / count, "calls_per_step": v["calls"] / count,
                     "share_of_wall": v["self_ms"] / count / wall_ms} for k, v in top],
        "matmul_flops_per_step": matmul_flops_step,
        "matmul_flops_per_s_in_step": matmul_flops_step / (matmul_ms / 1000.0) if matmul_ms > 0 else 0.0,
        "matmul_shapes": shape_rows,
    }


def profile_eval(cfg: RunConfig, stride: int, batches: int, compiled: bool) -> dict[str, Any]:
    """Evaluation forwards of the preset's model, scored from column seq_len - stride: timed, then profiled."""
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    seq = cfg.eval_seq_len
    rows, col0 = max(cfg.eval.batch_tokens // seq, 1), seq - stride
    x = torch.randint(0, cfg.model.vocab_size, (rows, seq))  # (B, T)
    run = torch.compile(lambda a, b: token_nll(model, a, b, col0), dynamic=False) if compiled else (
        lambda a, b: token_nll(model, a, b, col0))
    with torch.inference_mode():
        token_nll(model, x, x, col0)  # eager first, as the evaluators do: lazy state (RoPE tables) settles
        t0 = time.perf_counter()
        run(x, x)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            run(x, x)
        wall_ms = 1000.0 * (time.perf_counter() - t0) / batches
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(batches):
                run(x, x)
    groups: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        groups[category(ev.key)] += ev.self_cpu_time_total / 1000.0 / batches
        per_op[ev.key] += ev.self_cpu_time_total / 1000.0 / batches
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    return {"stride": stride, "compiled": compiled, "rows": rows, "seq_len": seq, "first_call_s": first_s,
            "ms_per_batch": wall_ms, "scored_tokens_per_s": rows * stride / (wall_ms / 1000.0),
            "self_ms_per_batch": dict(sorted(groups.items())),
            "share_of_wall": {g: v / wall_ms for g, v in sorted(groups.items())},
            "top_ops": [{"op": k, "self_ms_per_batch": v, "share_of_wall": v / wall_ms} for k, v in top]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-record-tuned")
    ap.add_argument("--steps", type=int, default=20, help="timed steps for step time and the loader's share")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps under the profiler")
    ap.add_argument("--matmul-sizes", default="256,512,1024,2048", help="square sizes of the peak sweep")
    ap.add_argument("--eager", action="store_true", help="do not compile even if the preset does")
    ap.add_argument("--eval-strides", default="", help="also profile evaluation forwards at these strides")
    ap.add_argument("--eval-compiled", action="store_true", help="profile them under eval.compile too")
    ap.add_argument("--eval-batches", type=int, default=8, help="evaluation forwards timed, then profiled")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    cfg = get_preset(a.preset)
    if a.eager:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
    device = torch.device("cpu")  # the profile groups and the peak sweep are the CPU track's question
    dtype = torch.bfloat16 if use_bf16(cfg.train.dtype, device) else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        cfg, data = with_data(cfg, Path(tmp))
        t_build = time.perf_counter()
        trainer = Trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device))
        t_built = time.perf_counter()
        first_s = run_steps(trainer, 0, 1)
        second_s = run_steps(trainer, 1, 1)
        compile_s = max(0.0, first_s - second_s) if cfg.train.compile else 0.0
        age = process_age_s() - (time.perf_counter() - T_IMPORT)  # interpreter start before our first line
        run_steps(trainer, 2, 1)
        loader_s = [0.0]
        next_batch = trainer.loader.next_batch

        def timed_next_batch(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = next_batch(*args, **kwargs)
            loader_s[0] += time.perf_counter() - t0
            return out

        trainer.loader.next_batch = timed_next_batch  # type: ignore[method-assign]
        steps_s = run_steps(trainer, 3, a.steps)
        del trainer.loader.next_batch
        prof = profile_steps(trainer, 3 + a.steps, a.profile_steps, dtype)
    sweep = matmul_peak([int(n) for n in a.matmul_sizes.split(",")], dtype, device, seconds=0.3)
    step_s = steps_s / a.steps
    tokens_per_s = cfg.train.train_batch_tokens / step_s
    startup = age + (T_IMPORTED - T_IMPORT) + (t_built - t_build) + first_s
    result = {
        "benchmark": "profile_step",
        "preset": a.preset,
        "device": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "compile": cfg.train.compile,
        "data": data,
        "startup": {"interpreter_s": age, "imports_s": T_IMPORTED - T_IMPORT, "build_s": t_built - t_build,
                    "first_step_s": first_s, "compile_s": compile_s, "to_first_step_s": startup,
                    "to_first_step_excluding_compile_s": startup - compile_s},
        "inductor_cache": inductor_counters() if cfg.train.compile else {},
        "steps": a.steps,
        "step_ms": 1000.0 * step_s,
        "tokens_per_s": tokens_per_s,
        "loader_ms_per_step": 1000.0 * loader_s[0] / a.steps,
        "loader_share": loader_s[0] / steps_s,
        "peak_memory_bytes": peak_memory_bytes(device),
        "matmul_sweep_flops": sweep,
        "profile": prof,
    }
    result["matmul_share_of_peak_in_step"] = prof["matmul_flops_per_s_in_step"] / sweep["peak"]
    strides = [int(s) for s in a.eval_strides.split(",") if s]
    result["eval"] = [profile_eval(cfg, stride, a.eval_batches, compiled) for compiled in
                      ([False, True] if a.eval_compiled else [False]) for stride in strides]
    for row in result["eval"]:
        row["over_train_tokens_per_s"] = row["scored_tokens_per_s"] / tokens_per_s
    emit(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
