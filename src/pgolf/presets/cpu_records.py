"""The seed records' switches on the CPU track (embedded corpus, 2 cores, 600 s of training, 1,000,000
bytes, 600 s of evaluation), derived from `cpu_baseline()` as the challenge presets derive from the
baseline (`pgolf.presets.records`); and `cpu-record-tuned`, the switches that measured better than
cpu-baseline on the CPU track itself (docs/LOG.md), which is not a scaled record.

How a record is scaled (the numbers are starting points for measurement, not tuned results):

- Width stays cpu-baseline's 128 with 4/2 heads, as every record keeps the baseline's 512 and 8/4.
  Dims given as a share of the head (partial RoPE 16 of 64) or of the width (side tables of 128 =
  d/4) keep that share: RoPE on 8 of 32 dims, side tables 32 wide.
- Shape growth is smaller than the records'. A record spends the bytes int6 frees on depth and MLP
  width (its matrices grow about 1.6x). Here a trained weight compresses about like a Gaussian
  (cpu-baseline's int8 artifact measured 875,662 bytes for 937,884 parameters, 3% under Gaussian
  rows; the records' long runs reach ~4.5 bits per int6 weight against a Gaussian's 5.4), so int6
  frees less: matrices grow 1.18x (414, 609) and 1.26x (332, whose bits are allocated), split between
  depth and width the way the record split them; #1992's SDClip codes (~3.4 bits) afford 2x. Each
  preset fits 1,000,000 bytes with Gaussian weights (tests/test_quant_presets.py) and in the
  `pgolf inspect` estimate.
- Steps: cpu-baseline makes about 250 steps of 16,384 tokens in 600 s (6,000-6,800 tokens/s
  measured). A preset's steps are estimated as 250 / (its matmul work per token relative to
  cpu-baseline); `pgolf inspect` times them on the machine. Step-counted settings (momentum
  warm-up, EMA decay) keep the share of training they have in the record: see `_steps` and
  `_decay`. The record's wall-clock warm-down of N iterations is the last N/steps of the budget,
  given here as `train.warmdown_frac` so it does not depend on the step estimate.
- Sequences stay 256 tokens (the records doubled theirs to 2048): longer windows cost steps, and a
  stride-64 sliding evaluation at 256 already costs 4 standard passes of the 600 s evaluation.
- Test-time training: chunked, one epoch over 8,192-token chunks (about 34 chunks of ~275k
  validation tokens), so scoring plus adaptation stay far inside 600 s.
"""

from __future__ import annotations

from pgolf.config import RunConfig
from pgolf.presets.base import cpu_baseline, derive
from pgolf.presets.techniques import RECORDS

CPU_BASELINE_STEPS = 250
"""Steps cpu-baseline makes in 600 s on the development machine (the unit of the step estimates)."""


def _estimated_steps(work: float, tokens_per_step: int = 16_384) -> int:
    """Steps in 600 s for `work` times cpu-baseline's matmul work per token (block matmuls over the virtual
    layers, attention at the sequence length, the head) at `tokens_per_step`."""
    return round(CPU_BASELINE_STEPS / work * 16_384 / tokens_per_step)


def _steps(record_value: int, record: str, steps: int) -> int:
    """A step count of the record (e.g. its momentum warm-up) at the same share of a run of `steps`."""
    return max(1, round(record_value * steps / RECORDS[record].steps))


def _share(record_iters: int, record: str) -> float:
    """The share of the record's run that its N iterations (e.g. a wall-clock warm-down) cover."""
    return round(record_iters / RECORDS[record].steps, 2)


def _decay(decay: float, record: str, steps: int) -> float:
    """A per-step decay (EMA) whose horizon is the same share of a run of `steps` as in the record:
    decay ** (record steps / steps), rounded to 3 decimals."""
    return round(decay ** (RECORDS[record].steps / steps), 3)


# The 03-21 .. 03-24 sp1024 stack on the CPU track (see pgolf.presets.records for the record values).
_SP1024_MODEL = dict(rope_dims=8, rope_train_seq_len=128, ln_scale=True, smear_gate="v1", bigram_buckets=1024,
                     bigram_dim=32, ortho_init=True)
# rope_train_seq_len 128: the records' Rotary keeps a 1024-token length while training at 2048, so the
# NTK-rescaled base applies at every length; half the training length keeps that here.
# BigramHash 1024x32 and value embeddings 1024x32: each side table a quarter of the token table's
# parameters (records: bigram 2048x128 = half, VE 1024x128 = a quarter), as bytes here are scarcer.
_SP1024_OPTIM = dict(matrix_lr=0.025, scalar_lr=0.025, tied_embed_lr=0.035, muon_momentum=0.99,
                     muon_momentum_warmup_start=0.92, grad_clip_norm=0.3, muon_wd=0.04, embed_wd=0.04,
                     adam_wd=0.04)


def cpu_record_332() -> RunConfig:
    """PR #332 scaled: one layer deeper and a narrower MLP than cpu-record-414, bits allocated by gradient
    sensitivity (int5..8) to fit 1,000,000 bytes."""
    steps = _estimated_steps(work=1.27)
    return derive(
        cpu_baseline(), name="cpu-record-332",
        # 12L x 1408 is 414's 11L x 1536 plus a layer with a narrower MLP, still wider than the baseline's
        # 1024: here 9 x 264 against cpu-record-414's 8 x 272 and cpu-baseline's 7 x 256;
        # XSA on the last 3 of 9 (record: 4 of 12)
        model=dict(_SP1024_MODEL, num_layers=9, mlp_hidden=264, xsa_last_n=3),
        optim=dict(_SP1024_OPTIM, muon_momentum_warmup_steps=_steps(1500, "332", steps)),
        # record: warm-down 3000 of its 8,054 steps; EMA 0.997; sensitivity over the last 10% of the warm-down
        train=dict(warmdown_frac=_share(3000, "332"), ema_decay=_decay(0.997, "332", steps), sensitivity_frac=0.1),
        quant=dict(scheme="intx", matrix_bits=6, embed_bits=8, allocate_bits=True, min_bits=5, max_bits=8,
                   compressor="zstd", level=22),
        eval=dict(stride=64),
    )


def cpu_record_414() -> RunConfig:
    """PR #414 scaled: 8 layers x MLP 2.125 (record 11 x 3.0 against the baseline's 9 x 2.0), value
    embeddings on the last two blocks, EMA, GPTQ-lite int6 + int8 embeddings, zstd-22."""
    steps = _estimated_steps(work=1.16)
    return derive(
        cpu_baseline(), name="cpu-record-414",
        model=dict(_SP1024_MODEL, num_layers=8, mlp_mult=2.125, xsa_last_n=3, value_embed_layers=(6, 7),
                   value_embed_dim=32),
        optim=dict(_SP1024_OPTIM, muon_momentum_warmup_steps=_steps(1500, "414", steps)),
        # record: 786,432 tokens/step (1.5x the baseline's); kept at 16,384 here, as 24,576 would leave
        # ~140 steps. Warm-down 3500 of 7,101 steps; late QAT below LR scale 0.15.
        train=dict(warmdown_frac=_share(3500, "414"), ema_decay=_decay(0.997, "414", steps), qat_threshold=0.15),
        quant=dict(scheme="intx", matrix_bits=6, matrix_clip="gptq_lite", embed_bits=8, control_dtype="float16",
                   compressor="zstd", level=22),
        eval=dict(stride=64),
    )


def cpu_record_609() -> RunConfig:
    """PR #609 scaled: cpu-record-414 with LeakyReLU(0.5)^2, XSA on every layer, sharded Muon, full GPTQ
    calibrated inside the budget, selective +-1 pruning and lzma."""
    steps = _estimated_steps(work=1.16)
    return derive(
        cpu_record_414(), name="cpu-record-609",
        model=dict(mlp_activation="leaky_relu2", xsa_last_n=8),
        optim=dict(muon_sharded=True, muon_batched=True, muon_momentum_warmup_steps=_steps(1500, "609", steps)),
        # 64 calibration sequences (16k tokens, ~0.5% of the training tokens; the 03-29 follow-up used 64
        # of its ~7,000 batches) inside the follow-up's 14 s reserve, the same share of a 600 s budget
        train=dict(warmdown_frac=_share(3500, "609"), ema_decay=_decay(0.997, "609", steps), calibration_reserve_seconds=14.0),
        quant=dict(gptq=True, gptq_calibration="train", gptq_batches=64, prune=True, compressor="lzma", level=6),
    )


def cpu_record_1992_legal() -> RunConfig:
    """PR #1992 (legal part) scaled: vocabulary 2048, 9 layers x MLP 4x looped 2..4 twice from 35%, GPT-J
    parallel residuals from block 6, headwise gated attention, small batch, SDClip GPTQ, chunked TTT."""
    steps = _estimated_steps(work=2.59, tokens_per_step=6_144)
    return derive(
        cpu_baseline(), name="cpu-record-1992-legal",
        # Vocabulary 2048, not 8192: the record's token table is 12% of its parameters; at width 128 an
        # sp8192 table alone (1.05M parameters) would not fit 1,000,000 bytes, while 2048 x 128 is ~14% of
        # this model and longer pieces mean fewer tokens (more text) per second of CPU.
        # Loop 2..4 and parallel residuals from 6 sit where 3..5 and 7 sit in the record's 11 blocks.
        model=dict(vocab_size=2048, num_layers=9, mlp_mult=4.0, mlp_activation="leaky_relu2", xsa_last_n=9,
                   rope_dims=8, rope_train_seq_len=256, ln_scale=True, skip_gates=True, qk_gain_init=5.25,
                   num_loops=2, loop_start=2, loop_end=4, loop_enable_frac=0.35, parallel_residual="gptj",
                   parallel_from=6, attn_gate="headwise", ortho_init=True),
        optim=dict(matrix_lr=0.022, scalar_lr=0.02, tied_embed_lr=0.03, muon_momentum=0.99,
                   muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=_steps(1500, "1992-legal", steps),
                   muon_row_normalize=True, grad_clip_norm=0.3, muon_wd=0.095, embed_wd=0.085, adam_wd=0.02),
        # small batch: the record's 196,608 tokens are 0.375x the baseline's, so 6,144 = 24 x 256 here,
        # one micro-batch (the record's GRAD_ACCUM_STEPS=1); GPTQ calibration in the record's 12 s reserve
        train=dict(train_batch_tokens=6_144, grad_accum_steps=1, warmdown_frac=0.72,
                   ema_decay=_decay(0.990, "1992-legal", steps), data_order="shuffled", calibration_reserve_seconds=12.0),
        quant=dict(scheme="intx", matrix_bits=6, embed_bits=7, control_dtype="float16", matrix_clip="sdclip",
                   embed_clip="sdclip", sdclip_k=(12.85,), sdclip_k_embed=(15.0,), gptq=True, gptq_calibration="train",
                   gptq_batches=64, byte_shuffle=True, compressor="brotli", level=11),
        eval=dict(stride=64, ttt="chunked"),
        ttt=dict(chunk_tokens=8_192, lr=0.005, momentum=0.9, epochs=1, batch_seqs=32, grad_clip=1.0),
    )


def cpu_record_tuned() -> RunConfig:
    """What measured better than cpu-baseline on the CPU track itself (docs/LOG.md, 2026-11-26 ablations):
    LeakyReLU(0.5)^2, a smaller batch (more steps in the same seconds), learning rates 0.56x cpu-baseline's
    with decoupled weight decay 0.04, Muon momentum 0.85 and Adam beta1 0.3, a warm-down over the whole budget,
    per-document LoRA test-time training at evaluation (score-first, inside 600 s, at a learning rate screened
    on a trained model) mixed with the model's own unadapted scores (`eval.mix_unadapted`) and a second LoRA pass's
    (`ttt.lora_mix_lr`), and order-8 n-gram caches of the already-scored validation tokens mixed into the
    scores (`eval.ngram_order`).

    The records' other optimiser switches (MuonEq-R, EMA, late QAT, their learning rates, momentum 0.99,
    orthogonal init) and their shape switches measured no gain or a loss (at 1,600 steps: momentum 0.99
    +0.027, orthogonal init +0.009, EMA +0.003), so this preset keeps cpu-baseline's Muon (at lower rates
    and momentum, with weight decay, its Newton-Schulz batched) and 7x128 shape."""
    return derive(
        cpu_baseline(), name="cpu-record-tuned",
        model=dict(mlp_activation="leaky_relu2"),
        # learning rates 0.56x cpu-baseline's: 0.7x was best of 0.35-1.5x at 270 fixed steps (float32), and at
        # 1,600 steps in bfloat16 0.8x of that scored 0.0035 better (1.25x: 0.013 worse); decoupled weight
        # decay 0.04 on every group (the records' value; no gain at ~60 steps) scored 0.008 better at 1,600
        # steps, and all three changes together 0.0147 (docs/LOG.md, equal-step screens of 2026-11-27)
        # Newton-Schulz of same-shape matrices as one batched iteration (the same update up to rounding):
        # the Muon step 58-73 -> 31-33 ms, training 11-14% more tokens/s (docs/LOG.md)
        # Muon momentum 0.85 from the first step (cpu-baseline's warm-up starts there) instead of 0.95: at 1,600 steps
        # 0.99 / 0.95 / 0.9 / 0.85 / 0.8 scored 1.7060 (lr 0.7x, no weight decay) / 1.6641 / 1.6556 / 1.6505 / 1.6505
        # (docs/LOG.md, 2026-11-28); Adam's beta1 (the tied embedding and the scalars) 0.3 instead of 0.9: at 1,600
        # steps (float32) 0.9 / 0.8 / 0.7 / 0.6 / 0.5 / 0.4 / 0.3 scored 1.6519 / 1.6481 / 1.6410 / 1.6388 / 1.6370 /
        # 1.6363 / 1.6343 on seed 1337 and 1.6550 / 1.6520 / 1.6448 / 1.6433 / 1.6415 / 1.6384 / 1.6379 on seed 42
        # (docs/LOG.md, 2026-11-28)
        optim=dict(matrix_lr=0.0224, scalar_lr=0.0224, tied_embed_lr=0.028, muon_wd=0.04, embed_wd=0.04, adam_wd=0.04,
                   muon_momentum=0.85, beta1=0.3, muon_sharded=True, muon_batched=True),
        # 16 sequences of 256 in one micro-batch: at 180 s (eager, 2 seeds) 16,384 -> 8,192 tokens per step gained
        # 0.08 bpb and 8,192 -> 4,096 another 0.04, at equal tokens per second; at 600 s, where ~1,100 steps no
        # longer limit the run, the preset gains ~0.03 over cpu-baseline before its TTT (docs/LOG.md)
        # the warm-down over the whole run: 0.3 / 0.45 / 0.6 / 0.75 scored 1.6843 / 1.6803 / 1.6788 / 1.6771 at
        # 1,600 steps on seed 1337 (0.6 better than 0.45 on seeds 42 and 2025 too), and with weight decay 0.75 / 1.0
        # 1.6641 / 1.6630 (docs/LOG.md)
        train=dict(train_batch_tokens=4_096, grad_accum_steps=1, warmdown_frac=1.0),
        # 4x the steps make the weights less compressible (cpu-baseline's int8 + zlib model: 749k bytes after 61
        # steps, 821k after 270 at 4,096 tokens): int8 codes with the GPTQ-lite clip, the smallest codec, and
        # bits per tensor between 6 and 8 chosen so the artifact always fits (all 8 while it does)
        quant=dict(scheme="intx", matrix_bits=8, embed_bits=8, matrix_clip="gptq_lite", compressor="best",
                   allocate_bits=True, min_bits=6, max_bits=8),
        # n-gram caches of the scored stream and of the current document mixed into the LoRA-adapted scores:
        # -0.059 to -0.062 bpb on each of 3 seeds' artifacts (orders 6-16 within 0.0002, 4 0.0015 worse; docs/LOG.md),
        # then -0.006 on each with the mixture's weights learned per state of the caches' confidence
        # and -0.005 more with absolute discounting in the caches (docs/LOG.md); the unadapted model's stride-64
        # sliding scores mixed into the adapted model's (~27 s more): -0.004 on each of the 3 seeds
        eval=dict(ttt="lora", ngram_order=8, mix_unadapted=True, stride=64),
        # the adapters' Adam rate, screened on a trained model: without the caches 0.006 scored 0.026 below the
        # default 0.001 (0.002-0.01 all gain; 0.015 overshoots; rank 16 did not help); with them 0.004 is best
        # (0.002 / 0.003 / 0.004 / 0.006 / 0.009 on seed 1337), -0.0027 on each of 3 seeds against 0.006;
        # a second LoRA pass at rank 16 mixed in (chosen on training text among rank 8 at 0.008-0.02 and rank 16 at
        # 0.004 / 0.008): -0.0023 to -0.0028 on each of 3 seeds for 159-181 s more evaluation (docs/LOG.md)
        ttt=dict(lora_lr=0.004, lora_mix_lr=0.004, lora_mix_rank=16),
    )
