"""One evaluation path for 1 process and N: sliding, chunked TTT and per-document LoRA TTT (and the last two
with the n-gram cache) on two gloo processes give the single process's scores (the ledger's coverage check runs over both ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_ttt import flat_luts, one_thread, tiny_gpt  # noqa: F401  (one_thread: autouse fixture)

from pgolf import dist
from pgolf.eval.lora import evaluate_lora, lora_losses
from pgolf.eval.sliding import evaluate, unadapted_losses
from pgolf.eval.ttt import SGDChunkAdapter, evaluate_chunked
from pgolf.tokenizer import BOS_ID

WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_ttt_distributed import write_scores
write_scores(sys.argv[1])
"""


def scores(rank: int, world_size: int) -> dict[str, list[Any]]:
    """The three evaluations of a fixed tiny model and stream as this rank of `world_size`."""
    g = torch.Generator().manual_seed(5)
    docs = [torch.cat([torch.tensor([BOS_ID]), torch.randint(4, 64, (int(n),), generator=g)])
            for n in torch.randint(5, 90, (12,), generator=g)]
    tokens = torch.cat(docs)  # (N,)
    where = dict(rank=rank, world_size=world_size)
    model = tiny_gpt()
    adapter = SGDChunkAdapter(model, lr=0.05, momentum=0.9, epochs=2, batch_seqs=3, grad_clip=1.0, seq_len=32, **where)
    results = {
        "sliding": evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=8, batch_tokens=256, **where),
        "chunked": evaluate_chunked(model, tokens, flat_luts(), seq_len=32, stride=8, batch_tokens=256,
                                    chunk_tokens=160, adapter=adapter, **where),
        "lora": evaluate_lora(tiny_gpt(), tokens, flat_luts(), seq_len=32, chunk=8, batch_docs=3, lora_rank=2,
                              alpha=4.0, lr=0.05, **where),
        # the cache's mixture weights read every earlier position's score, whichever rank committed it
        "sliding_ngram": evaluate(tiny_gpt(), tokens, flat_luts(), seq_len=32, stride=8, batch_tokens=256,
                                  ngram_order=3, **where),
        "lora_ngram": evaluate_lora(tiny_gpt(), tokens, flat_luts(), seq_len=32, chunk=8, batch_docs=3, lora_rank=2,
                                    alpha=4.0, lr=0.05, ngram_order=3, **where),
        # the unadapted pass's losses, gathered from every rank, mixed in before the caches
        "lora_unadapted": evaluate_lora(tiny_gpt(), tokens, flat_luts(), seq_len=32, chunk=8, batch_docs=3,
                                        lora_rank=2, alpha=4.0, lr=0.05, ngram_order=3, **where,
                                        unadapted_nll=unadapted_losses(tiny_gpt(), tokens, flat_luts(), seq_len=32,
                                                                       stride=8, batch_tokens=256, **where)[0]),
        # a second LoRA pass's losses too (ttt.lora_mix_lr), gathered the same way
        "lora_second": evaluate_lora(tiny_gpt(), tokens, flat_luts(), seq_len=32, chunk=8, batch_docs=3,
                                     lora_rank=2, alpha=4.0, lr=0.05, ngram_order=3, **where,
                                     lora_mix_nll=lora_losses(tiny_gpt(), tokens, flat_luts(), seq_len=32, chunk=8,
                                                              batch_docs=3, lora_rank=2, alpha=4.0, lr=0.2,
                                                              **where)[0]),
    }
    return {k: [r.loss, r.bpb, r.num_tokens, r.num_bytes, r.ledger.num_adapted, r.ledger.num_scored]
            for k, r in results.items()}


def write_scores(path: str) -> None:
    info = dist.init("cpu")
    try:
        out = scores(info.rank, info.world_size)
        if info.is_main:
            Path(path).write_text(json.dumps(out))
    finally:
        dist.shutdown()


def test_two_gloo_processes_score_like_one(tmp_path: Path) -> None:
    tests = str(Path(__file__).resolve().parent)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=tests))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "scores.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    double = json.loads((tmp_path / "scores.json").read_text())
    single = scores(0, 1)
    for mode, (loss, bpb, tokens, nbytes, adapted, scored) in single.items():
        d_loss, d_bpb, d_tokens, d_bytes, d_adapted, d_scored = double[mode]
        assert (d_tokens, d_bytes, d_adapted, d_scored) == (tokens, nbytes, adapted, scored), mode
        assert d_loss == pytest.approx(loss, rel=1e-5) and d_bpb == pytest.approx(bpb, rel=1e-5), mode
    assert single["chunked"][1] != single["sliding"][1]  # adaptation really ran on both sides
    assert single["sliding_ngram"][1] != single["sliding"][1] and single["lora_ngram"][1] != single["lora"][1]
    assert single["lora_unadapted"][1] != single["lora_ngram"][1]
    assert single["lora_second"][1] not in (single["lora_ngram"][1], single["lora_unadapted"][1])
