"""GPTQ calibration speed of a preset's model on this machine, printed as one JSON object.

Times `collect_hessians` (the Hessians GPTQ needs: one forward per batch with hooks on every quantised
linear) on random token batches of the preset's calibration shape, with late QAT's fake quantisation
off (what the exporter sees since the trainer clears it) and on (what it saw before), and a plain
forward of the same batches for reference. Seconds are the best of `--repeats`.

    python benchmarks/calibration.py [--preset cpu-record-609] [--batches 8] [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from pgolf.dist import use_bf16
from pgolf.fileio import write_bytes_atomic
from pgolf.model.gpt import GPT
from pgolf.model.roles import param_roles
from pgolf.presets import get_preset
from pgolf.quant.gptq import CALIBRATION_BATCH_SEQS
from pgolf.quant.gptq import collect_hessians
from pgolf.quant.qat import qat_switch


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-record-609")
    ap.add_argument("--batches", type=int, default=8, help="calibration batches of the exporter's size")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    cfg = get_preset(args.preset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    names = list(param_roles(model))
    seq_len = cfg.quant.gptq_seq_len or cfg.train.train_seq_len
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.model.vocab_size, (CALIBRATION_BATCH_SEQS, seq_len), generator=gen).to(device)
               for _ in range(args.batches)]
    bf16 = use_bf16(cfg.train.dtype, device)
    tokens = args.batches * CALIBRATION_BATCH_SEQS * seq_len

    def plain() -> None:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for b in batches:
                model.hidden_states(b)

    def collect() -> None:
        collect_hessians(model, batches, device, names, autocast_bf16=bf16)

    model.eval()
    result: dict[str, object] = {"preset": args.preset, "device": str(device), "bf16": bf16, "tokens": tokens,
                                 "forward_s": best_seconds(plain, args.repeats, device),
                                 "collect_s": best_seconds(collect, args.repeats, device)}
    switch = qat_switch(model, cfg)
    switch(True)
    result["collect_with_qat_s"] = best_seconds(collect, args.repeats, device)
    switch(False)
    result["collect_tokens_per_s"] = tokens / result["collect_s"]  # type: ignore[operator]
    result["qat_slowdown"] = result["collect_with_qat_s"] / result["collect_s"]  # type: ignore[operator]
    text = json.dumps(result, indent=1)
    if args.out:
        write_bytes_atomic(args.out, (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()
