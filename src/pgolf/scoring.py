"""Scoring an artifact: rebuild the model from the file alone and measure val_bpb on the validation shards,
with score-first test-time training when `eval.ttt` asks for it.

This module and what it imports (`pgolf.artifact.SCORING_MODULES`) are everything needed to load and
evaluate an artifact, nothing of training, quantisation, data preparation, logging or the CLI. A
test imports it with every other pgolf module blocked to keep that claim true.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.artifact import ArtifactInfo, LoadedArtifact, check_budget, read_artifact
from pgolf.config import EvalConfig, RunConfig, model_config_from_dict
from pgolf.data.shards import list_shards, load_tokens
from pgolf.dist import DistInfo, use_bf16
from pgolf.eval.sliding import EvalResult, evaluate, truncate_for_eval, unadapted_losses
from pgolf.model.gpt import GPT
from pgolf.tokenizer import build_byte_luts, load_tokenizer

@dataclass
class ValData:
    """Validation tokens (truncated for the eval geometry) with the tokenizer's byte tables."""

    tokens: torch.Tensor
    luts: Any
    sp: Any


def load_val_data(dataset_dir: str, tokenizer_path: str, vocab_size: int, seq_len: int, max_tokens: int = 0) -> ValData:
    """Read every validation shard (ids checked against `vocab_size`), truncate like the challenge, and build
    the metric's tables."""
    sp = load_tokenizer(tokenizer_path, vocab_size)
    tokens = torch.from_numpy(load_tokens(list_shards(dataset_dir, "val"), vocab_size).astype(np.int64))
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    return ValData(tokens=truncate_for_eval(tokens, seq_len), luts=build_byte_luts(sp, vocab_size), sp=sp)


# The torch.compile backend of eval.compile.
COMPILE_BACKEND = "inductor"


def compile_backend(ecfg: EvalConfig) -> str | None:
    return COMPILE_BACKEND if ecfg.compile else None


def run_eval(model: torch.nn.Module, val: ValData, ecfg: EvalConfig, seq_len: int, stride: int, info: DistInfo,
             autocast_bf16: bool, progress: bool = False, compiled: bool = True) -> EvalResult:
    """Sliding-window evaluation (no adaptation) with the given geometry on this rank's share of the windows,
    compiled when eval.compile says so and `compiled` allows it."""
    return evaluate(model, val.tokens, val.luts, seq_len=seq_len, stride=stride, batch_tokens=ecfg.batch_tokens,
                    rank=info.rank, world_size=info.world_size, device=info.device,
                    autocast_bf16=autocast_bf16, progress=progress and info.is_main,
                    compile_backend=compile_backend(ecfg) if compiled else None)


# The evaluation stage each eval.ttt mode runs, as named in the time ledger.
EVAL_STAGES = {"none": "sliding", "chunked": "ttt_chunked", "lora": "ttt_lora"}


def _with_passes(r: EvalResult, fixed: EvalResult | None, second: EvalResult | None = None) -> EvalResult:
    """The TTT result with the unadapted pass and the second LoRA pass (those that ran) on its clock, as
    stages, and kept beside it."""
    if fixed is not None:
        r.seconds += fixed.seconds
        r.stages["unadapted"] = fixed.seconds
        r.unadapted = fixed
    if second is not None:
        r.seconds += second.seconds
        r.stages["lora_mix"] = second.seconds
        r.lora_mix = second
    return r


def evaluate_model(model: torch.nn.Module, val: ValData, cfg: RunConfig, info: DistInfo,
                   progress: bool = False) -> EvalResult:
    """The scored evaluation: sliding windows, or score-first TTT as `eval.ttt` says (changes `model` in place
    for `chunked`: give it the model rebuilt from the artifact)."""
    seq_len, stride, ecfg, t = cfg.eval_seq_len, cfg.eval_stride, cfg.eval, cfg.ttt
    bf16 = use_bf16(ecfg.dtype, info.device)
    where: dict[str, Any] = dict(rank=info.rank, world_size=info.world_size, device=info.device, autocast_bf16=bf16,
                                 progress=progress and info.is_main)
    # The TTT modules load only when used; the counted code (the bundle of this config) holds them when on.
    fixed = None
    if ecfg.mix_unadapted and ecfg.ttt != "none":  # the unadapted pass, before any adaptation, on the clock
        where["unadapted_nll"], fixed = unadapted_losses(
            model, val.tokens, val.luts, seq_len=seq_len, stride=stride, batch_tokens=ecfg.batch_tokens,
            rank=info.rank, world_size=info.world_size, device=info.device, autocast_bf16=bf16,
            compile_backend=compile_backend(ecfg))
    if ecfg.ttt == "chunked":
        from pgolf.eval.ttt import SGDChunkAdapter, evaluate_chunked

        adapter = SGDChunkAdapter(model, lr=t.lr, momentum=t.momentum, epochs=t.epochs, batch_seqs=t.batch_seqs,
                                  grad_clip=t.grad_clip, seq_len=seq_len, autocast_bf16=bf16, rank=info.rank,
                                  world_size=info.world_size)
        return _with_passes(evaluate_chunked(
            model, val.tokens, val.luts, seq_len=seq_len, stride=stride, batch_tokens=ecfg.batch_tokens,
            chunk_tokens=t.chunk_tokens, adapter=adapter, ngram_order=ecfg.ngram_order, **where), fixed)
    if ecfg.ttt == "lora":
        from pgolf.eval.lora import evaluate_lora, lora_losses

        lora = dict(seq_len=seq_len, chunk=t.lora_chunk, batch_docs=t.lora_batch_docs, lora_rank=t.lora_rank,
                    alpha=t.lora_alpha, steps=t.lora_steps, seed=cfg.train.seed)
        second = None
        if t.lora_mix_lr > 0:  # a second pass with adapters of its own, mixed into the first's scores
            rank2 = t.lora_mix_rank or t.lora_rank
            shape2 = {**lora, "lora_rank": rank2, "alpha": t.lora_alpha * rank2 / t.lora_rank}  # same alpha / rank
            plain = {k: v for k, v in where.items() if k != "unadapted_nll"}
            where["lora_mix_nll"], second = lora_losses(model, val.tokens, val.luts, lr=t.lora_mix_lr, **shape2,
                                                        **plain)
        return _with_passes(evaluate_lora(model, val.tokens, val.luts, lr=t.lora_lr, ngram_order=ecfg.ngram_order,
                                          **lora, **where), fixed, second)
    return evaluate(model, val.tokens, val.luts, seq_len=seq_len, stride=stride, batch_tokens=ecfg.batch_tokens,
                    compile_backend=compile_backend(ecfg), ngram_order=ecfg.ngram_order, **where)


def build_model_from_artifact(loaded: LoadedArtifact, device: torch.device) -> GPT:
    """Rebuild the model from a read artifact alone (strict load: every tensor must match)."""
    model = GPT(model_config_from_dict(loaded.model_config)).to(device)
    model.load_state_dict({k: v.to(device) for k, v in loaded.state.items()}, strict=True)
    return model


@dataclass
class ArtifactScore:
    """An artifact scored: the result, the model as evaluated, the artifact's cost, seconds per stage."""

    result: EvalResult
    model: GPT
    info: ArtifactInfo
    stages: dict[str, float]  # "load" (read, dequantise, rebuild; validation data too when read here) and the eval
    train_seconds: float | None  # training seconds the artifact records, if any
    train_steps: int | None  # training steps the artifact records, if any


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_artifact(path: str | Path, cfg: RunConfig, info: DistInfo, val: ValData | None = None,
                   progress: bool = False, check_bytes: bool = False, code_bytes: int | None = None) -> ArtifactScore:
    """Load the artifact (and the validation data unless given), rebuild the model and evaluate it, timed.

    `check_bytes` refuses (UserError) an artifact over budget.artifact_max_bytes before evaluating it;
    `code_bytes` is the counted code of this evaluation (default: the figure the artifact recorded)."""
    t0 = time.perf_counter()
    loaded = read_artifact(path, code_bytes=code_bytes)
    if check_bytes:
        check_budget(loaded.info, cfg.budget.artifact_max_bytes)
    model = build_model_from_artifact(loaded, info.device)
    if val is None:
        val = load_val_data(cfg.dataset_dir, cfg.tokenizer_path, model.cfg.vocab_size, cfg.eval_seq_len,
                            cfg.eval.max_tokens)
    _sync(info.device)
    load_seconds = time.perf_counter() - t0
    r = evaluate_model(model, val, cfg, info, progress=progress)
    stage = EVAL_STAGES[cfg.eval.ttt]
    stages = {"load": load_seconds, stage: r.seconds, **{f"{stage}.{k}": v for k, v in r.stages.items()}}
    steps = loaded.meta.get("extra_meta", {}).get("steps")
    return ArtifactScore(result=r, model=model, info=loaded.info, stages=stages, train_seconds=None,
                         train_steps=steps if isinstance(steps, int) else None)


def eval_line(r: EvalResult, cfg: RunConfig, total_bytes: int) -> str:
    """The one line `pgolf eval` prints."""
    return (f"val_bpb {r.bpb:.6f} | val_loss {r.loss:.6f} | {r.num_tokens:,} tokens, {r.num_bytes:,} bytes | "
            f"seq {cfg.eval_seq_len} stride {cfg.eval_stride} ttt {cfg.eval.ttt} | {r.seconds:.1f} s | "
            f"artifact {total_bytes:,} bytes")


def eval_artifact(path: str, cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    """`pgolf eval`: score an artifact on the validation shards; checks the byte budget first."""
    scored = score_artifact(path, cfg, info, progress=True, check_bytes=True)
    r = scored.result
    out = {"artifact": str(path), "val_bpb": r.bpb, "val_loss": r.loss, "tokens": r.num_tokens, "bytes": r.num_bytes,
           "eval_seconds": sum(v for k, v in scored.stages.items() if "." not in k), "stages": scored.stages,
           "total_bytes": scored.info.total_bytes, "seq_len": cfg.eval_seq_len, "stride": cfg.eval_stride,
           "ttt": cfg.eval.ttt}
    if info.is_main:
        print(eval_line(r, cfg, scored.info.total_bytes), file=sys.stdout)
    return out
