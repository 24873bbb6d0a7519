"""Seconds and peak memory of the n-gram cache's mixing (`eval.ngram_order`) at a given stream length,
printed as one JSON object.

The stream is synthetic: random tokens with a repeated share, so that contexts of every order recur
as they do in text. The losses are random. Only the time and the memory are measured here; the score
gain is measured on trained models (docs/LOG.md). The peak is the process's resident set, the
figure a 62M-token FineWeb validation run would have to fit. The CPU track's validation set is
318,464 tokens.

    python benchmarks/ngram_cache.py [--tokens 318464,4000000] [--order 8] [--vocab 1024] [--device cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from jsonout import emit

from pgolf.eval.ngram import mix_scores
from pgolf.runlog import peak_memory_bytes


def synthetic_stream(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(n,) tokens: pieces of 64 random tokens, each reused with probability 1/2."""
    g = torch.Generator().manual_seed(seed)
    pieces = torch.randint(0, vocab, (max(1, n // 128), 64), generator=g)  # (P, 64)
    pick = torch.randint(0, pieces.shape[0], (n // 64 + 1,), generator=g)
    fresh = torch.rand(n // 64 + 1, generator=g) < 0.5
    rows = torch.where(fresh[:, None], torch.randint(0, vocab, (n // 64 + 1, 64), generator=g), pieces[pick])
    return rows.flatten()[:n]


CPU = torch.device("cpu")


def measure(n: int, order: int, vocab: int, device: torch.device) -> dict[str, Any]:
    tokens = synthetic_stream(n, vocab).to(device)
    nll = (torch.rand(n, generator=torch.Generator().manual_seed(1)) * 6).to(device)
    before = peak_memory_bytes(CPU)  # the process's max resident set
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    mixed = mix_scores(nll, tokens, order, vocab)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t
    peak = peak_memory_bytes(CPU)
    row: dict[str, Any] = {"tokens": n, "seconds": seconds, "tokens_per_s": n / seconds,
                           "peak_rss_bytes": peak, "peak_rss_growth_bytes": peak - before,
                           "mean_model_nll": float(nll[1:].double().mean()),
                           "mean_mixed_nll": float(mixed[1:].double().mean())}
    if device.type == "cuda":
        row["cuda_peak_bytes"] = peak_memory_bytes(device)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="318464,4000000", help="comma-separated stream lengths, shortest first")
    ap.add_argument("--order", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [measure(int(n), args.order, args.vocab, device) for n in args.tokens.split(",")]
    emit({"benchmark": "ngram_cache", "order": args.order, "vocab": args.vocab, "device": str(device),
          "threads": torch.get_num_threads(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
