"""pgolf's training speed against a reference implementation of the same model, side by side in one run,
printed as one JSON object.

The reference is a local copy of the challenge's `train_gpt.py` when `--script PATH` is given (its `GPT`
class, built with the preset's shape; the file is imported, not run, and its own training loop is not
used), and otherwise pgolf's frozen plain-PyTorch copy of the baseline model (tests/reference_baseline_gpt.py).
Both models start from the same weights where the parameter names match, train on the same batches
with the same optimisers (Muon for the 2-D block matrices, Adam for the rest, the preset's learning
rates), eager or both compiled, in alternating rounds; each side's tokens/s is the best of its rounds,
and the loss curves are compared step by step.

    python benchmarks/vs_reference.py [--preset cpu-baseline] [--steps 10] [--rounds 2] [--eager] [--script PATH]
        [--dtype float32] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgolf.config import ModelConfig, RunConfig
from pgolf.dist import use_bf16
from pgolf.fileio import write_bytes_atomic
from pgolf.model.gpt import GPT
from pgolf.optim.muon import Muon
from pgolf.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


def load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_model(cfg: ModelConfig, script: Path | None) -> tuple[str, nn.Module]:
    """(what it is, the reference GPT of `cfg`'s shape)."""
    if script is None:
        module = load_module(REPO / "tests" / "reference_baseline_gpt.py", "reference_baseline_gpt")
        return "pgolf frozen baseline (tests/reference_baseline_gpt.py)", module.ReferenceGPT(cfg)
    module = load_module(script, "challenge_train_gpt")
    model = module.GPT(vocab_size=cfg.vocab_size, num_layers=cfg.num_layers, model_dim=cfg.model_dim,
                       num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, mlp_mult=int(cfg.mlp_mult),
                       tie_embeddings=cfg.tie_embeddings, tied_embed_init_std=cfg.tied_embed_init_std,
                       logit_softcap=cfg.logit_softcap, rope_base=cfg.rope_base, qk_gain_init=cfg.qk_gain_init)
    return f"challenge script {script}", model.float()


def optimizers(model: nn.Module, run: RunConfig) -> list[torch.optim.Optimizer]:
    """The same split for any GPT: Muon for 2-D block matrices (both sides >= 16), Adam for the token table
    and for everything else, at the preset's learning rates."""
    o = run.optim
    emb, mats, rest = [], [], []
    for name, p in model.named_parameters():
        if name == "tok_emb.weight":
            emb.append(p)
        elif name.startswith("blocks.") and p.ndim == 2 and min(p.shape) >= 16:
            mats.append(p)
        else:
            rest.append(p)
    adam = dict(betas=(o.beta1, o.beta2), eps=o.adam_eps)
    return [torch.optim.Adam(emb, lr=o.tied_embed_lr, **adam),  # type: ignore[arg-type]
            Muon(mats, lr=o.matrix_lr, momentum=o.muon_momentum, backend_steps=o.muon_backend_steps),
            torch.optim.Adam(rest, lr=o.scalar_lr, **adam)]  # type: ignore[arg-type]


def batches(run: RunConfig, steps: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, the micro-batches (x, y): token windows of the prepared training shard when it exists
    (random tokens otherwise), the same for both sides."""
    tc = run.train
    rows = tc.train_batch_tokens // tc.grad_accum_steps // tc.train_seq_len
    need = steps * tc.grad_accum_steps * rows * tc.train_seq_len + 1
    shard = sorted(Path(run.dataset_dir).glob("fineweb_train_*.bin"))
    if shard:
        from pgolf.data.shards import open_shard_memmap

        stream = torch.from_numpy(open_shard_memmap(shard[0])[:need].astype("int64"))
    else:
        stream = torch.randint(0, run.model.vocab_size, (need,), generator=torch.Generator().manual_seed(0))
    if stream.numel() < need:
        stream = stream.repeat(need // stream.numel() + 1)[:need]
    out, pos = [], 0
    for _ in range(steps):
        micro = []
        for _ in range(tc.grad_accum_steps):
            n = rows * tc.train_seq_len
            chunk = stream[pos: pos + n + 1]
            micro.append((chunk[:-1].view(rows, -1), chunk[1:].view(rows, -1)))
            pos += n
        out.append(micro)
    return out


def train_steps(model: nn.Module, run_model: nn.Module, opts: list[torch.optim.Optimizer],
                data: list[list[tuple[torch.Tensor, torch.Tensor]]], bf16: bool) -> tuple[float, list[float]]:
    """(seconds, loss per step) for one pass over `data`."""
    losses = []
    t0 = time.perf_counter()
    for micro in data:
        total = 0.0
        for x, y in micro:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = run_model(x, y)
            (loss / len(micro)).backward()
            total += float(loss.detach()) / len(micro)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(total)
    return time.perf_counter() - t0, losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-baseline")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--eager", action="store_true", help="do not compile (both sides)")
    ap.add_argument("--script", default="", help="a local copy of the challenge's train_gpt.py")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="",
                    help="the compute dtype of both sides (default: the preset's train.dtype; float32 compares the "
                         "loss curves exactly, bfloat16 autocast only to its rounding)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    run = get_preset(a.preset)
    if a.dtype:
        run = replace(run, train=replace(run.train, dtype=a.dtype))
    torch.manual_seed(0)
    ours = GPT(run.model)
    what, ref = reference_model(run.model, Path(a.script) if a.script else None)
    missing = ref.load_state_dict(ours.state_dict(), strict=False)
    same_init = not missing.missing_keys and not missing.unexpected_keys
    compiled = run.train.compile and not a.eager
    sides = {}
    for name, model in (("pgolf", ours), ("reference", ref)):
        run_model = torch.compile(model, dynamic=False) if compiled else model
        sides[name] = {"model": model, "run": run_model, "opts": optimizers(model, run), "seconds": [], "losses": []}
    bf16 = use_bf16(run.train.dtype, torch.device("cpu"))
    warm, timed = batches(run, 2), batches(run, a.steps * a.rounds)
    for side in sides.values():  # compile and first-touch costs stay out of the timing
        train_steps(side["model"], side["run"], side["opts"], warm, bf16)
    for r in range(a.rounds):
        chunk = timed[r * a.steps: (r + 1) * a.steps]
        for side in sides.values():
            seconds, losses = train_steps(side["model"], side["run"], side["opts"], chunk, bf16)
            side["seconds"].append(seconds)
            side["losses"] += losses
    tokens = a.steps * run.train.train_batch_tokens
    rate = {name: tokens / min(s["seconds"]) for name, s in sides.items()}
    diffs = [abs(p - q) for p, q in zip(sides["pgolf"]["losses"], sides["reference"]["losses"])]
    result = {"benchmark": "vs_reference", "preset": a.preset, "reference": what, "compiled": compiled, "bf16": bf16,
              "threads": torch.get_num_threads(), "steps_per_round": a.steps, "rounds": a.rounds,
              "pgolf_tokens_per_s": rate["pgolf"], "reference_tokens_per_s": rate["reference"],
              "speedup": rate["pgolf"] / rate["reference"], "same_init": same_init,
              "loss_max_abs_diff": max(diffs), "pgolf_losses": sides["pgolf"]["losses"],
              "reference_losses": sides["reference"]["losses"],
              "round_seconds": {name: s["seconds"] for name, s in sides.items()}}
    text = json.dumps(result, indent=1)
    if a.out:
        write_bytes_atomic(a.out, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
