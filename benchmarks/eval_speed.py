"""Seconds of the final evaluation of an artifact on this machine, by stride and batch, printed as one JSON object.

Scores ARTIFACT on the validation set its stored config names (as `pgolf eval` does, any `--flags`
applied, in the dtype eval.dtype resolves to: bfloat16 autocast where the CPU has it natively) with each stride and `eval.batch_tokens` given (or, with `--ttt lora`, by per-document
LoRA TTT at the artifact's `ttt.*` settings), the configurations alternating over
`--rounds` so that a slow minute of the machine hits them all alike. Each configuration is run
twice over when `--full-last-layer` is given: as shipped (the last layer and head computed only for
a window's scored columns) and with the last layer over every column, the evaluation before that
change; with `--compiled`, also as shipped under `eval.compile` (torch.compile of the steady batch shape;
the seconds include the compilation, reported apart as `compile_s`). Every variant must give the same
val_bpb (sliding windows to 1e-6 in float32; LoRA TTT and bfloat16 to LORA_TOLERANCE, see there); the
benchmark fails otherwise.

The targets (issue "Speed"): sliding stride-64 evaluation of the CPU-track validation set <= 30 s,
and standard evaluation >= 3x training tokens/s (training tokens/s: benchmarks/throughput.py).
Under torchrun the sliding windows are split across the processes (gloo on CPU) as `pgolf eval`
splits them; rank 0 prints the JSON, whose `world_size` and `threads` (per process) say how it ran.

    [torchrun --standalone --nproc_per_node=2] python benchmarks/eval_speed.py ARTIFACT [--strides 256,64] [--batch-tokens 2048,4096,16384] [--rounds 2]
        [--full-last-layer] [--compiled [BACKEND]] [--ttt lora] [--flags "--eval.max_tokens 65536"] [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from typing import Any

import torch
from jsonout import emit

from pgolf import dist
from pgolf.artifact import read_artifact
from pgolf.cli import config_stored_in
from pgolf.config import RunConfig
from pgolf.eval.lora import evaluate_lora
from pgolf.eval.sliding import evaluate
from pgolf.model.gpt import GPT
from pgolf.scoring import COMPILE_BACKEND, ValData, build_model_from_artifact, load_val_data
from pgolf.verbargs import parse_config

TARGET_SLIDING_SECONDS = 30.0
# LoRA TTT adapts with Adam (beta1 0, eps 1e-10): its first step is lr * sign(g), so float rounding in a
# near-zero gradient entry flips a whole step; two exact computations of the same adaptation differ there.
LORA_TOLERANCE = 1e-4


class FullLastLayerGPT(GPT):
    """The model with its last layer run over every column and only then sliced (the earlier evaluation)."""

    def hidden_states(self, input_ids: torch.Tensor, keep_from: int = 0) -> torch.Tensor:
        return super().hidden_states(input_ids)[:, keep_from:]


def full_last_layer(model: GPT) -> GPT:
    """A copy of `model` as FullLastLayerGPT (same weights)."""
    full = FullLastLayerGPT(model.cfg, attn_backend=model.attn_backend)
    full.load_state_dict(model.state_dict())
    return full


def score(model: GPT, val: ValData, cfg: RunConfig, stride: int, batch: int, ttt: str,
          info: dist.DistInfo, bf16: bool, backend: str | None = None) -> tuple[float, float]:
    """(val_bpb, compile seconds) of one evaluation: sliding windows at (stride, batch), compiled with
    `backend` if given, or per-document LoRA TTT (cfg.ttt)."""
    if ttt == "lora":
        t = cfg.ttt
        return evaluate_lora(model, val.tokens, val.luts, seq_len=cfg.eval_seq_len, chunk=t.lora_chunk,
                             batch_docs=t.lora_batch_docs, lora_rank=t.lora_rank, alpha=t.lora_alpha, lr=t.lora_lr,
                             seed=cfg.train.seed, autocast_bf16=bf16).bpb, 0.0
    r = evaluate(model, val.tokens, val.luts, seq_len=cfg.eval_seq_len, stride=stride, batch_tokens=batch,
                 rank=info.rank, world_size=info.world_size, autocast_bf16=bf16, compile_backend=backend)
    return r.bpb, r.stages.get("compile", 0.0)


def run(artifact: str, flags: list[str], strides: list[int], batches: list[int], rounds: int,
        with_full_last_layer: bool, ttt: str, compiled: str, info: dist.DistInfo) -> dict[str, Any]:
    if ttt == "lora" and info.world_size > 1:
        raise SystemExit("--ttt lora times one process; run it without torchrun")
    loaded = read_artifact(artifact)
    cfg = parse_config(flags, config_stored_in(loaded.run_config), "eval_speed.py")
    model = build_model_from_artifact(loaded, torch.device("cpu"))
    bf16 = dist.use_bf16(cfg.eval.dtype, torch.device("cpu"))  # eval.dtype as `pgolf eval` resolves it
    seq_len = cfg.eval_seq_len
    val = load_val_data(cfg.dataset_dir, cfg.tokenizer_path, model.cfg.vocab_size, seq_len, cfg.eval.max_tokens)
    variants: dict[str, tuple[GPT, str | None]] = {"shipped": (model, None)}
    if with_full_last_layer:
        variants["full_last_layer"] = (full_last_layer(model), None)
    if ttt == "lora":  # one geometry: each document's own prefix, in chunks of ttt.lora_chunk
        strides, batches = [0], [0]
    elif compiled:
        variants["compiled"] = (model, compiled)
    keys = [(s, b, v) for s in strides for b in batches for v in variants]
    seconds: dict[tuple[int, int, str], list[float]] = {k: [] for k in keys}
    compile_s: dict[tuple[int, int, str], list[float]] = {k: [] for k in keys}
    bpb: dict[tuple[int, int, str], float] = {}
    for _ in range(rounds):
        for stride, batch, variant in keys:
            t = time.perf_counter()
            bpb[(stride, batch, variant)], c = score(variants[variant][0], val, cfg, stride, batch, ttt,
                                                     info, bf16, variants[variant][1])
            seconds[(stride, batch, variant)].append(time.perf_counter() - t)
            compile_s[(stride, batch, variant)].append(c)
    # bfloat16 autocast rounds differently along the eager and the compiled path
    tolerance = LORA_TOLERANCE if ttt == "lora" or bf16 else 1e-6
    for stride in strides:
        scores = [v for k, v in bpb.items() if k[0] == stride]
        if max(scores) - min(scores) > tolerance:
            raise SystemExit(f"stride {stride}: the variants disagree on val_bpb: {scores}")
    rows = []
    for (stride, batch, variant), secs in seconds.items():
        best = min(secs)
        rows.append({"stride": stride, "batch_tokens": batch, "variant": variant, "val_bpb": bpb[(stride, batch, variant)],
                     "seconds": secs, "best_s": best, "median_s": statistics.median(secs),
                     "compile_s": compile_s[(stride, batch, variant)],
                     "scored_tokens_per_s": (val.tokens.numel() - 1) / best})
    # a compiled configuration counts with its first round, which paid the compilation (later rounds find
    # dynamo's cache warm)
    sliding = [r["seconds"][0] if r["variant"] == "compiled" else r["best_s"] for r in rows
               if r["stride"] == 64 and r["variant"] in ("shipped", "compiled")]
    return {"benchmark": "eval_speed", "artifact": artifact, "flags": flags, "seq_len": seq_len, "ttt": ttt,
            "validation_tokens": val.tokens.numel() - 1, "world_size": info.world_size, "bf16": bf16,
            "threads": torch.get_num_threads(), "rounds": rounds,
            "rows": rows, "best_sliding64_s": min(sliding) if sliding else None,
            "within_target": (min(sliding) <= TARGET_SLIDING_SECONDS) if sliding else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--strides", default="256,64")
    p.add_argument("--batch-tokens", default="2048,4096,16384")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--full-last-layer", action="store_true", help="also time the last layer over every column")
    p.add_argument("--compiled", nargs="?", const=COMPILE_BACKEND, default="", metavar="BACKEND",
                   help=f"also time the shipped model under eval.compile (torch.compile backend, {COMPILE_BACKEND} "
                        "as the runs use it)")
    p.add_argument("--ttt", choices=("none", "lora"), default="none",
                   help="lora: time per-document LoRA TTT (the artifact's ttt settings) instead of sliding windows")
    p.add_argument("--flags", default="", help="pgolf flags applied to the artifact's stored config")
    p.add_argument("--out", default="")
    a = p.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    info = dist.init("cpu")
    result = run(a.artifact, shlex.split(a.flags), ints(a.strides), ints(a.batch_tokens), max(1, a.rounds),
                 a.full_last_layer, a.ttt, a.compiled, info)
    if info.is_main:
        emit(result, a.out)
    dist.shutdown()


if __name__ == "__main__":
    main()
