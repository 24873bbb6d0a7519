"""The seed records as presets in the challenge budget (16,000,000 bytes, 600 s on 8xH100, FineWeb).

Each preset is the baseline plus what the record changed, read from its folder in openai/parameter-golf
(`records/track_10min_16mb/...`: the `Hyperparameters` defaults, the run command and the seed logs):

- `record-332`  PR #332, 2026-03-21_12L_GradQuant_PartialRoPE_EMA (1.1320; 27,618,913 params)
- `record-414`  PR #414, 2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233 (1.1233; 26,993,756)
- `record-609`  PR #609, 2026-03-24_XSA-all_FullGPTQ_ParallelMuon_1.1155 (1.1154; 26,993,756)
- `record-1992-legal`  PR #1992, 2026-04-30_SP8192_FullStack_HeadwiseGate_PreQuantTTT (35,989,592
  params) without its pre-quantisation TTT, which trains on validation text before export and was
  ruled out; its score-first chunked TTT stays.

What pgolf does not build, or builds differently, is in each preset's technique table
(`pgolf.presets.techniques`), which `pgolf inspect` prints.
"""

from __future__ import annotations

from pgolf.config import RunConfig
from pgolf.presets.base import baseline_8xh100, derive

# The optimiser of the 03-21 .. 03-24 sp1024 line (PRs #332, #414, #609 share it): lower learning
# rates, Muon momentum 0.99 warmed from 0.92 over 1500 steps, clip 0.3, decoupled weight decay 0.04 on
# Muon and on the AdamW groups (the token table and side tables, and the scalars).
_SP1024_OPTIM = dict(matrix_lr=0.025, scalar_lr=0.025, tied_embed_lr=0.035, muon_momentum=0.99,
                     muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500, grad_clip_norm=0.3,
                     muon_wd=0.04, embed_wd=0.04, adam_wd=0.04)

# The model of the 03-21/03-22 stack: partial RoPE on 16 of 64 dims whose Rotary keeps a 1024-token
# training length (so the NTK-rescaled base applies at the 2048 training length too), LN scale,
# XSA on the last 4 blocks, SmearGate v1, BigramHash 2048x128 and OrthoInit.
_SP1024_MODEL = dict(rope_dims=16, rope_train_seq_len=1024, ln_scale=True, xsa_last_n=4, smear_gate="v1",
                     bigram_buckets=2048, bigram_dim=128, ortho_init=True)


def record_332() -> RunConfig:
    """PR #332: 12 layers with MLP 1408 funded by gradient-guided int5/6/7, EMA, XSA4, partial RoPE."""
    return derive(
        baseline_8xh100(), name="record-332",
        model=dict(_SP1024_MODEL, num_layers=12, mlp_hidden=1408),
        optim=_SP1024_OPTIM,
        # 524,288 tokens/step as the baseline ("smaller batch gave more steps"), at sequence length 2048
        train=dict(train_seq_len=2048, warmdown_iters=3000, ema_decay=0.997, sensitivity_frac=0.1),
        # GRAD_QUANT=1: mean squared gradients over the last 10% of the warm-down choose each matrix's width
        # (record: top 10% int7, middle int6, bottom 20% int5; tok_emb int8); zstd-22.
        quant=dict(scheme="intx", matrix_bits=6, embed_bits=8, allocate_bits=True, min_bits=5, max_bits=8,
                   compressor="zstd", level=22),
        eval=dict(stride=64),
    )


def record_414() -> RunConfig:
    """PR #414: 11L MLP3x, value embeddings on 9-10, EMA 0.997, GPTQ-lite int6 + int8 embeddings, zstd-22."""
    return derive(
        baseline_8xh100(), name="record-414",
        model=dict(_SP1024_MODEL, num_layers=11, mlp_mult=3.0, value_embed_layers=(9, 10), value_embed_dim=128),
        optim=_SP1024_OPTIM,
        # 786,432 tokens = 8 ranks x 48 sequences of 2048; the record's tight SWA is collected but never
        # exported (the EMA weights are), so it stays off here; late QAT once the LR scale is below 0.15
        train=dict(train_batch_tokens=786_432, train_seq_len=2048, warmdown_iters=3500, ema_decay=0.997,
                   qat_threshold=0.15),
        # tensors of at most 65,536 values, control tensors included, are stored as fp16
        quant=dict(scheme="intx", matrix_bits=6, matrix_clip="gptq_lite", embed_bits=8, control_dtype="float16",
                   compressor="zstd", level=22),
        eval=dict(stride=64),
    )


def record_609() -> RunConfig:
    """PR #609: #414's stack with LeakyReLU(0.5)^2, XSA on all 11 layers, parallel Muon, full-Hessian GPTQ
    and selective +-1 pruning, lzma."""
    base = record_414()
    return derive(
        base, name="record-609",
        model=dict(mlp_activation="leaky_relu2", xsa_last_n=11),
        # parameter banking + parallel Muon (PR #399): pgolf's sharded, batched Muon is the nearest switch
        optim=dict(muon_sharded=True, muon_batched=True),
        # The record calibrated on 256 batches after the clock stopped, which the organisers ruled must
        # count as training; here calibration runs inside the budget as the same stack's 03-29 follow-up
        # did: 64 batches (x 48 sequences of 2048 on each rank) in a 14 s reserve.
        train=dict(calibration_reserve_seconds=14.0),
        quant=dict(gptq=True, gptq_calibration="train", gptq_batches=64 * 48, prune=True, compressor="lzma",
                   level=6),
    )


def record_1992_legal() -> RunConfig:
    """PR #1992's SP8192 stack (PR #1493 base + small batch, EMA 0.990, headwise gated attention) with
    score-first chunked TTT only: its pre-quantisation TTT on validation text is left out."""
    return derive(
        baseline_8xh100(), name="record-1992-legal",
        model=dict(vocab_size=8192, num_layers=11, mlp_mult=4.0, mlp_activation="leaky_relu2", xsa_last_n=11,
                   rope_dims=16, rope_train_seq_len=2048, ln_scale=True, skip_gates=True, qk_gain_init=5.25,
                   num_loops=2, loop_start=3, loop_end=5, loop_enable_frac=0.35, parallel_residual="gptj",
                   parallel_from=7, attn_gate="headwise", ortho_init=True),
        optim=dict(matrix_lr=0.022, scalar_lr=0.02, tied_embed_lr=0.03, muon_momentum=0.99,
                   muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500, muon_row_normalize=True,
                   grad_clip_norm=0.3, muon_wd=0.095, embed_wd=0.085, adam_wd=0.02),
        # small batch: 196,608 tokens = 8 ranks x 12 sequences of 2048, one micro-batch per rank;
        # ShuffledSequenceLoader; GPTQ calibration inside a 12 s reserve of the budget
        train=dict(train_batch_tokens=196_608, train_seq_len=2048, warmdown_frac=0.72, ema_decay=0.990,
                   data_order="shuffled", calibration_reserve_seconds=12.0),
        # GPTQ (64 batches x 12 sequences on each rank) with SDClip: int6 matrices k=12.85, int7 embedding
        # k=15; small tensors, control tensors included, fp16; byte shuffle + brotli-11
        quant=dict(scheme="intx", matrix_bits=6, embed_bits=7, control_dtype="float16", matrix_clip="sdclip",
                   embed_clip="sdclip", sdclip_k=(12.85,), sdclip_k_embed=(15.0,), gptq=True, gptq_calibration="train",
                   gptq_batches=64 * 12, byte_shuffle=True, compressor="brotli", level=11),
        eval=dict(stride=64, ttt="chunked"),
        # TTT_LR 0.005 (the SP8192 value), 3 epochs, momentum 0.9, 32,768-token chunks, clip 1.0
        ttt=dict(chunk_tokens=32_768, lr=0.005, momentum=0.9, epochs=3, batch_seqs=32, grad_clip=1.0),
    )
