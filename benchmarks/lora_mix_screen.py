"""Which second LoRA pass (`ttt.lora_mix_rank`, `ttt.lora_mix_lr`) helps an artifact most, printed as one JSON object.

Runs over a text the preset's unadapted sliding pass and its main LoRA pass once each, then every
candidate second LoRA pass, keeps each pass's per-token losses, and scores the mixture of the main pass
with the unadapted one, without and with each candidate, exactly as the evaluation mixes them
(`pgolf.eval.ngram.mix_passes`, then the preset's n-gram caches). `--text train-tail` takes
the tokens from the end of the training shard (a 600 s CPU-track run reads the shard in order and stops
well before its end, so this text is unseen by the model and is not the validation text): settings are
chosen there, then confirmed on the validation text with `pgolf eval`. `--decays P:C ...` also scores each
candidate's mixture with other forgetting rates of the two posteriors (P: the passes', C: the caches';
1 is the plain posterior; shipped: `PASS_DECAY`, `CACHE_DECAY`), the screen that chose them.

    python benchmarks/lora_mix_screen.py ARTIFACT --text train-tail --second 8:0.008 16:0.004
        [--decays 1:1 0.997:0.995] [--preset NAME] [--flags "--eval.ngram_order 6"] [--out F]
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from typing import Any

import numpy as np
import torch

from jsonout import emit
from pgolf.artifact import read_artifact
from pgolf.config import ConfigError
from pgolf.data.shards import list_shards, load_tokens
from pgolf.dist import use_bf16
from pgolf.eval.bpb import target_byte_counts
from pgolf.eval.lora import lora_losses
from pgolf.eval.ngram import mix_passes, mix_scores
from pgolf.eval.sliding import unadapted_losses
from pgolf.presets import get_preset
from pgolf.scoring import build_model_from_artifact
from pgolf.tokenizer import BOS_ID, build_byte_luts, load_tokenizer
from pgolf.verbargs import parse_config


def screen_tokens(cfg: Any, text: str, num: int) -> torch.Tensor:
    """`num` + 1 tokens of the validation shard, or of the training shard's end starting at a BOS."""
    if text == "val":
        tokens = load_tokens(list_shards(cfg.dataset_dir, "val"), cfg.model.vocab_size)[: num + 1]
    else:
        train = load_tokens(list_shards(cfg.dataset_dir, "train"), cfg.model.vocab_size)
        tail = train[-(num + 20_000):]
        first = int(np.flatnonzero(tail == BOS_ID)[0])
        tokens = tail[first: first + num + 1]
    return torch.from_numpy(tokens.astype(np.int64))


def pair(kind: str, first: type) -> Any:
    """An argparse type for `A:B` (first as `first`, then a float): a bad value is argparse's one-line exit 2."""
    def parse(text: str) -> tuple[Any, float]:
        try:
            a, b = text.split(":")
            return first(a), float(b)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    return parse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--preset", default="cpu-record-tuned")
    ap.add_argument("--text", choices=("train-tail", "val"), default="train-tail")
    ap.add_argument("--tokens", type=int, default=318_464, help="predictions to score")
    ap.add_argument("--second", nargs="+", type=pair("RANK:LR", int), default=[(16, 0.004)],
                    help="candidate passes as RANK:LR")
    ap.add_argument("--decays", nargs="*", type=pair("PASS:CACHE", float), default=[],
                    help="forgetting rates to score each mixture at, PASS:CACHE")
    ap.add_argument("--flags", default="", help="pgolf flags applied to the preset")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    try:
        cfg = parse_config(shlex.split(a.flags), get_preset(a.preset), "lora_mix_screen.py")
    except ConfigError as e:
        ap.error(f"--flags: {e}")
    t, ecfg = cfg.ttt, cfg.eval
    tokens = screen_tokens(cfg, a.text, a.tokens)
    luts = build_byte_luts(load_tokenizer(cfg.tokenizer_path, cfg.model.vocab_size), cfg.model.vocab_size)
    nbytes = float(target_byte_counts(tokens[:-1], tokens[1:], luts).sum())
    model = build_model_from_artifact(read_artifact(a.artifact), torch.device("cpu"))
    bf16 = use_bf16(ecfg.dtype, torch.device("cpu"))
    lora = dict(seq_len=cfg.eval_seq_len, chunk=t.lora_chunk, batch_docs=t.lora_batch_docs, steps=t.lora_steps,
                seed=cfg.train.seed, autocast_bf16=bf16)

    def bpb(nll: torch.Tensor) -> float:
        return float(nll[1:].double().sum()) / math.log(2) / nbytes

    def final(main: torch.Tensor, others: list[torch.Tensor], passes: float | None = None,
              caches: float | None = None) -> float:
        mixed = mix_passes(main, others, tokens, decay=passes)
        return bpb(mix_scores(mixed, tokens, ecfg.ngram_order, cfg.model.vocab_size, decay=caches)
                   if ecfg.ngram_order else mixed)

    t0 = time.perf_counter()
    fixed = unadapted_losses(model, tokens, luts, seq_len=cfg.eval_seq_len, stride=cfg.eval_stride,
                             batch_tokens=ecfg.batch_tokens, autocast_bf16=bf16)[0]
    main_nll = lora_losses(model, tokens, luts, lora_rank=t.lora_rank, alpha=t.lora_alpha, lr=t.lora_lr, **lora)[0]
    base = final(main_nll, [fixed])
    rows = []
    for rank, lr in a.second:
        s0 = time.perf_counter()
        second = lora_losses(model, tokens, luts, lora_rank=rank, alpha=t.lora_alpha * rank / t.lora_rank, lr=lr,
                             **lora)[0]
        mixed = final(main_nll, [fixed, second])
        rows.append({"rank": rank, "lr": lr, "alone_bpb": bpb(second), "mixed_bpb": mixed, "gain_bpb": mixed - base,
                     "seconds": time.perf_counter() - s0,
                     "by_decay": [{"pass_decay": p, "cache_decay": c,
                                   "mixed_bpb": final(main_nll, [fixed, second], p, c)} for p, c in a.decays]})
    emit({"benchmark": "lora_mix_screen", "artifact": a.artifact, "preset": a.preset, "text": a.text,
          "predictions": int(tokens.numel() - 1), "bytes": nbytes, "unadapted_bpb": bpb(fixed),
          "main_lora_bpb": bpb(main_nll), "without_second_bpb": base, "candidates": rows,
          "seconds": time.perf_counter() - t0}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
