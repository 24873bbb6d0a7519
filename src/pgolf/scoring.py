"""Scoring an artifact: rebuild the model from the file alone and measure val_bpb on the validation shards.

This module and what it imports (`pgolf.artifact.SCORING_MODULES`) are everything needed to load and
evaluate an artifact, nothing of training, quantisation, data preparation, logging or the CLI. A
test imports it with every other pgolf module blocked to keep that claim true.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pgolf.artifact import LoadedArtifact, check_budget, read_artifact
from pgolf.config import EvalConfig, RunConfig, model_config_from_dict
from pgolf.data.shards import list_shards, load_tokens
from pgolf.dist import DistInfo, use_bf16
from pgolf.eval.sliding import EvalResult, evaluate, truncate_for_eval
from pgolf.model.gpt import GPT
from pgolf.tokenizer import build_byte_luts, load_tokenizer

@dataclass
class ValData:
    """Validation tokens (truncated for the eval geometry) with the tokenizer's byte tables."""

    tokens: torch.Tensor
    luts: Any
    sp: Any


def load_val_data(dataset_dir: str, tokenizer_path: str, vocab_size: int, seq_len: int, max_tokens: int = 0) -> ValData:
    """Read every validation shard, truncate like the challenge, and build the metric's tables."""
    sp = load_tokenizer(tokenizer_path, vocab_size)
    tokens = torch.from_numpy(load_tokens(list_shards(dataset_dir, "val")).astype(np.int64))
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    return ValData(tokens=truncate_for_eval(tokens, seq_len), luts=build_byte_luts(sp, vocab_size), sp=sp)


def run_eval(model: torch.nn.Module, val: ValData, ecfg: EvalConfig, seq_len: int, stride: int, info: DistInfo,
             autocast_bf16: bool, progress: bool = False) -> EvalResult:
    """Evaluate with the configured geometry on this rank's share of the windows."""
    return evaluate(model, val.tokens, val.luts, seq_len=seq_len, stride=stride, batch_tokens=ecfg.batch_tokens,
                    rank=info.rank, world_size=info.world_size, device=info.device,
                    autocast_bf16=autocast_bf16, progress=progress and info.is_main)


def build_model_from_artifact(loaded: LoadedArtifact, device: torch.device) -> GPT:
    """Rebuild the model from a read artifact alone (strict load: every tensor must match)."""
    model = GPT(model_config_from_dict(loaded.model_config)).to(device)
    model.load_state_dict({k: v.to(device) for k, v in loaded.state.items()}, strict=True)
    return model


def eval_artifact(path: str, cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    """`pgolf eval`: score an artifact on the validation shards; checks the byte budget first."""
    loaded = read_artifact(path)
    check_budget(loaded.info, cfg.budget.artifact_max_bytes)
    total_bytes = loaded.info.total_bytes
    model = build_model_from_artifact(loaded, info.device)
    seq_len, stride = cfg.eval_seq_len, cfg.eval_stride
    val = load_val_data(cfg.dataset_dir, cfg.tokenizer_path, model.cfg.vocab_size, seq_len, cfg.eval.max_tokens)
    r = run_eval(model, val, cfg.eval, seq_len, stride, info, use_bf16(cfg.eval.dtype, info.device), progress=True)
    out = {"artifact": str(path), "val_bpb": r.bpb, "val_loss": r.loss, "tokens": r.num_tokens, "bytes": r.num_bytes,
           "eval_seconds": r.seconds, "total_bytes": total_bytes, "seq_len": seq_len, "stride": stride}
    if info.is_main:
        print(f"val_bpb {r.bpb:.6f} | val_loss {r.loss:.6f} | {r.num_tokens:,} tokens, {r.num_bytes:,} bytes | "
              f"seq {seq_len} stride {stride} | {r.seconds:.1f} s | artifact {total_bytes:,} bytes", file=sys.stdout)
    return out
