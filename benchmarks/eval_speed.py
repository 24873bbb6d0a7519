"""Seconds of the final evaluation of an artifact on this machine, by stride and batch, printed as one JSON object.

Scores ARTIFACT on the validation set its stored config names (as `pgolf eval` does, any `--flags`
applied) with each stride and `eval.batch_tokens` given, the configurations alternating over
`--rounds` so that a slow minute of the machine hits them all alike. Each configuration is run
twice over when `--full-last-layer` is given: as shipped (the last layer and head computed only for
a window's scored columns) and with the last layer over every column, the evaluation before that
change. Every variant must give the same val_bpb (to 1e-6); the benchmark fails otherwise.

The targets (issue "Speed"): sliding stride-64 evaluation of the CPU-track validation set <= 30 s,
and standard evaluation >= 3x training tokens/s (training tokens/s: benchmarks/throughput.py).

    python benchmarks/eval_speed.py ARTIFACT [--strides 256,64] [--batch-tokens 4096,16384] [--rounds 2]
        [--full-last-layer] [--flags "--eval.max_tokens 65536"] [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from typing import Any

import torch
from jsonout import emit
from torch import nn

from pgolf.artifact import read_artifact
from pgolf.cli import _config_stored_in, parse_config
from pgolf.eval.sliding import evaluate
from pgolf.scoring import build_model_from_artifact, load_val_data

TARGET_SLIDING_SECONDS = 30.0


class FullLastLayer(nn.Module):
    """The model with its last layer run over every column and only then sliced (the earlier evaluation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def per_token_nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.per_token_nll(x, y)

    def hidden_states(self, x: torch.Tensor, keep_from: int = 0) -> torch.Tensor:
        return self.model.hidden_states(x)[:, keep_from:]

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.logits_from_hidden(h)


def run(artifact: str, flags: list[str], strides: list[int], batches: list[int], rounds: int,
        full_last_layer: bool) -> dict[str, Any]:
    cfg = parse_config(flags, _config_stored_in(read_artifact(artifact).run_config), "eval_speed.py")
    model = build_model_from_artifact(read_artifact(artifact), torch.device("cpu"))
    seq_len = cfg.eval_seq_len
    val = load_val_data(cfg.dataset_dir, cfg.tokenizer_path, model.cfg.vocab_size, seq_len, cfg.eval.max_tokens)
    variants = {"shipped": model, **({"full_last_layer": FullLastLayer(model)} if full_last_layer else {})}
    keys = [(s, b, v) for s in strides for b in batches for v in variants]
    seconds: dict[tuple[int, int, str], list[float]] = {k: [] for k in keys}
    bpb: dict[tuple[int, int, str], float] = {}
    for _ in range(rounds):
        for stride, batch, variant in keys:
            t = time.perf_counter()
            r = evaluate(variants[variant], val.tokens, val.luts, seq_len=seq_len, stride=stride, batch_tokens=batch)
            seconds[(stride, batch, variant)].append(time.perf_counter() - t)
            bpb[(stride, batch, variant)] = r.bpb
    for stride in strides:
        scores = [v for k, v in bpb.items() if k[0] == stride]
        if max(scores) - min(scores) > 1e-6:
            raise SystemExit(f"stride {stride}: the variants disagree on val_bpb: {scores}")
    rows = []
    for (stride, batch, variant), secs in seconds.items():
        best = min(secs)
        rows.append({"stride": stride, "batch_tokens": batch, "variant": variant, "val_bpb": bpb[(stride, batch, variant)],
                     "seconds": secs, "best_s": best, "median_s": statistics.median(secs),
                     "scored_tokens_per_s": (val.tokens.numel() - 1) / best})
    sliding = [r["best_s"] for r in rows if r["stride"] == 64 and r["variant"] == "shipped"]
    return {"benchmark": "eval_speed", "artifact": artifact, "flags": flags, "seq_len": seq_len,
            "validation_tokens": val.tokens.numel() - 1, "threads": torch.get_num_threads(), "rounds": rounds,
            "rows": rows, "best_sliding64_s": min(sliding) if sliding else None,
            "within_target": (min(sliding) <= TARGET_SLIDING_SECONDS) if sliding else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--strides", default="256,64")
    p.add_argument("--batch-tokens", default="4096,16384")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--full-last-layer", action="store_true", help="also time the last layer over every column")
    p.add_argument("--flags", default="", help="pgolf flags applied to the artifact's stored config")
    p.add_argument("--out", default="")
    a = p.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    emit(run(a.artifact, shlex.split(a.flags), ints(a.strides), ints(a.batch_tokens), max(1, a.rounds),
             a.full_last_layer), a.out)


if __name__ == "__main__":
    main()
