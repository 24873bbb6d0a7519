"""Full-Hessian GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), as the records run it (reference §5.2, `gptq_quantize_weight`, PR #609).

For a linear layer y = x Wᵀ the output error of a quantised Ŵ is tr((W - Ŵ) H (W - Ŵ)ᵀ) with
H = E[x xᵀ] over calibration tokens. GPTQ quantises one column at a time and moves each column's
rounding error onto the columns not yet quantised, weighted by the inverse Hessian: dead inputs
(zero diagonal) are dropped, the diagonal is damped by `damp * mean(diag H)`, columns go in order of
decreasing diagonal (act-order), the inverse comes from Cholesky factors, and the error is applied
lazily between blocks of 128 columns. The scales are fixed beforehand by a clip rule (percentile,
GPTQ-lite candidates or SDClip), so GPTQ only chooses codes.

Hessians are collected with forward hooks on the inputs of every quantised linear; the tied
embedding, which is the output head's weight, gets the Hessian of the head's input, the final-normed
hidden state. Calibration text is training data (never validation) or sampled from the model itself;
the seconds it takes are returned so the trainer can charge them to its clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from pgolf.config import RunConfig
from pgolf.quant.intx import as_groups, clip_candidates, scales_from_clip
from pgolf.quant.layout import TensorPlan, qmax


class GPTQError(ValueError):
    """The Hessian could not be factorised even after extra damping."""


def prepare_hessian(h: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """(damped Hessian, mask of dead columns) with dead diagonal entries set to 1."""
    if not bool(torch.isfinite(h).all()):
        raise GPTQError("the Hessian holds NaN or inf (activations overflowed during calibration)")
    h = h.double().clone()  # (C, C)
    dead = torch.diag(h) == 0  # (C,)
    h[dead, dead] = 1.0
    mean_diag = torch.diag(h).mean()
    h.diagonal().add_(damp * float(mean_diag))
    return h, dead


def upper_cholesky_of_inverse(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = Uᵀ U), adding damping until H factorises."""
    mean_diag = float(torch.diag(h).mean())
    for attempt in range(6):
        try:
            lower = torch.linalg.cholesky(h)
            inverse = torch.cholesky_inverse(lower)  # (C, C)
            return torch.linalg.cholesky(inverse, upper=True)
        except RuntimeError:  # torch.linalg.LinAlgError: not positive definite
            h = h.clone()
            h.diagonal().add_(max(damp, 1e-4) * mean_diag * 10 ** attempt)
    raise GPTQError("the Hessian is not positive definite even with extra damping")


@dataclass(frozen=True)
class HessianFactor:
    """What GPTQ takes from a Hessian, whatever the weights, bits and scales: the dead input columns, the
    column order, and the upper Cholesky factor of the damped inverse in that order. Computed once per
    tensor, it serves every clip candidate and every bit width that the budget fit tries."""

    dead: Tensor  # (C,) bool
    perm: Tensor  # (C,) int64
    hinv: Tensor  # (C, C) float64


def factor_hessian(h: Tensor, *, act_order: bool = True, damp: float = 0.01) -> HessianFactor:
    """The HessianFactor of h (C, C): act-order is decreasing diagonal (stable), then Cholesky."""
    h, dead = prepare_hessian(h, damp)
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(h.shape[0], device=h.device)
    return HessianFactor(dead=dead, perm=perm, hinv=upper_cholesky_of_inverse(h[perm][:, perm], damp))


def cached_factor(cache: dict[str, HessianFactor] | None, name: str, h: Tensor, *, act_order: bool,
                  damp: float) -> HessianFactor:
    """The factor of tensor `name`'s Hessian from `cache` (one export's), computing and storing it once."""
    if cache is not None and name in cache:
        return cache[name]
    factor = factor_hessian(h, act_order=act_order, damp=damp)
    if cache is not None:
        cache[name] = factor
    return factor


def gptq_codes(w: Tensor, h: Tensor, scale: Tensor, bits: int, *, block_size: int = 128,
               act_order: bool = True, damp: float = 0.01, factor: HessianFactor | None = None) -> Tensor:
    """GPTQ codes (R, C) int8 of w (R, C) for a Hessian h (C, C) (or its `factor`, which then decides
    act_order and damp) and fixed per-element scales (R, C)."""
    factor = factor if factor is not None else factor_hessian(h, act_order=act_order, damp=damp)
    qm = qmax(bits)
    # transposed, one column of w per row of wt, so that the column loop reads and updates contiguous memory
    wt = w.double().t().clone()  # (C, R)
    wt[factor.dead] = 0.0
    num_cols = wt.shape[0]
    wt, st, hinv = wt[factor.perm], scale.double().t()[factor.perm], factor.hinv  # (C, R), (C, R), (C, C)
    codes = torch.zeros_like(wt)  # (C, R)
    for i1 in range(0, num_cols, block_size):
        i2 = min(i1 + block_size, num_cols)
        block = wt[i1:i2].clone()  # (b, R)
        errors = torch.zeros_like(block)  # (b, R)
        for j in range(i2 - i1):
            col, s = block[j], st[i1 + j]  # (R,), (R,)
            q = torch.clamp(torch.round(col / s), -qm, qm)  # (R,)
            codes[i1 + j] = q
            err = (col - q * s) / hinv[i1 + j, i1 + j]  # (R,)
            block[j:].addr_(hinv[i1 + j, i1 + j:i2], err, alpha=-1.0)  # (b - j, R), in place
            errors[j] = err
        wt[i2:] -= hinv[i1:i2, i2:].t() @ errors  # (C - i2, R)
    return codes[torch.argsort(factor.perm)].t().to(torch.int8).contiguous()  # (R, C)


def output_error_per_row(w: Tensor, w_hat: Tensor, h: Tensor) -> Tensor:
    """(R,) e_r H e_rᵀ: each output's mean squared error over the calibration inputs."""
    e = (w.double() - w_hat.double())  # (R, C)
    return ((e @ h.double()) * e).sum(dim=1)


def quantize_rows_gptq(w: Tensor, plan: TensorPlan, h: Tensor, *, block_size: int, act_order: bool,
                       damp: float, factor: HessianFactor | None = None) -> dict[str, Tensor]:
    """GPTQ codes and scales for an intx_row plan; with several clip candidates (GPTQ-lite, a list of
    SDClip k) GPTQ runs once per candidate over one factorisation of h, and each row keeps the candidate
    with the lowest output error. (Stacking the candidates as K x R rows in one pass gives the same codes,
    but its K-times larger block no longer stays in a CPU's cache, and the column loop slowed down.)"""
    factor = factor if factor is not None else factor_hessian(h, act_order=act_order, damp=damp)
    rows = as_groups(w, plan)  # (R*G, g)
    best: dict[str, Tensor] | None = None
    best_err: Tensor | None = None
    for clip in clip_candidates(rows, plan):
        s_round, s_stored = scales_from_clip(clip, plan)  # (R*G,)
        full = s_round.reshape(plan.rows, plan.num_groups).repeat_interleave(plan.cols // plan.num_groups, dim=1)
        q = gptq_codes(w, h, full, plan.bits, block_size=block_size, factor=factor)  # (R, C)
        err = output_error_per_row(w, q.double() * full.double(), h)  # (R,)
        scale = s_stored.reshape(plan.rows, plan.num_groups)
        if best is None or best_err is None:
            best, best_err = {"q": q, "scale": scale}, err
            continue
        better = err < best_err  # (R,) ties keep the earlier candidate
        best = {"q": torch.where(better[:, None], q, best["q"]), "scale": torch.where(better[:, None], scale, best["scale"])}
        best_err = torch.minimum(err, best_err)
    assert best is not None
    return {"q": best["q"].contiguous(), "scale": best["scale"].contiguous()}


# ---------------------------------------------------------------- Hessians

def quantised_linears(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Linear]:
    """Weight name -> the linear module owning it, for the weights in `names` that belong to a linear."""
    wanted = set(names)
    return {f"{mod_name}.weight": mod for mod_name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and f"{mod_name}.weight" in wanted}


class HessianAccumulator:
    """Running Σ xᵀx and token count of one input stream (fp32 on the model's device)."""

    def __init__(self) -> None:
        self.sum: Tensor | None = None
        self.count = 0

    def add(self, x: Tensor) -> None:
        self.add_product(*input_product(x))

    def add_product(self, xtx: Tensor, count: int) -> None:
        self.sum = xtx if self.sum is None else self.sum + xtx
        self.count += count

    def mean(self) -> Tensor:
        assert self.sum is not None and self.count > 0
        return self.sum / self.count


def input_product(x: Tensor) -> tuple[Tensor, int]:
    """(xᵀx in fp32 over all leading dims, number of rows), never under autocast's reduced precision."""
    flat = x.detach().reshape(-1, x.shape[-1]).float()  # (N, C)
    with torch.autocast(flat.device.type, enabled=False):
        return flat.t() @ flat, flat.shape[0]


class _SharedInputs:
    """xᵀx of the last input seen, so that linears reading one tensor (q, k and v) share one product."""

    def __init__(self) -> None:
        self.last: tuple[Tensor, Tensor, int] | None = None

    def hook(self, acc: HessianAccumulator) -> Callable[..., None]:
        def add(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            if self.last is None or self.last[0] is not x:
                self.last = (x, *input_product(x))
            acc.add_product(self.last[1], self.last[2])
        return add


@contextlib.contextmanager
def _fast_fp32_matmuls(device: torch.device) -> Iterator[None]:
    """TF32 tensor cores for the fp32 xᵀx products on CUDA (fp32 accumulation); CPUs are left alone."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def collect_hessians(model: nn.Module, batches: Iterable[Tensor], device: torch.device,
                     names: Iterable[str] | None = None, *, autocast_bf16: bool = False,
                     seconds: float | None = None, rank: int = 0, world_size: int = 1) -> dict[str, Tensor]:
    """Weight name -> H = mean over calibration tokens of x xᵀ (fp32, (in, in)) for every quantised linear
    (all linears when `names` is None) and, when embeddings are tied, for `tok_emb.weight` from the
    final-normed hidden state that the tied head reads. `batches` are token ids (B, T).

    Forward passes run under bf16 autocast when `autocast_bf16` (the products stay fp32). With
    `world_size` > 1 this rank forwards batches rank, rank + world_size, ... and the sums are all-reduced,
    so every rank ends with the same Hessians. `seconds` bounds the time spent: once the next batch
    would not fit, the remaining batches are left out (at least one is always used)."""
    return _collect(model, batches, device, names, autocast_bf16=autocast_bf16, seconds=seconds, rank=rank,
                    world_size=world_size)[0]


@torch.no_grad()
def _collect(model: nn.Module, batches: Iterable[Tensor], device: torch.device, names: Iterable[str] | None, *,
             autocast_bf16: bool, seconds: float | None, rank: int, world_size: int
             ) -> tuple[dict[str, Tensor], int, bool]:
    """`collect_hessians` plus the calibration tokens used (all ranks) and whether `seconds` cut it short."""
    from pgolf import dist

    names = [n for n, _ in model.named_parameters()] if names is None else list(names)
    linears = quantised_linears(model, names)
    acc = {name: HessianAccumulator() for name in linears}
    shared = _SharedInputs()
    handles = [mod.register_forward_pre_hook(shared.hook(acc[name])) for name, mod in linears.items()]
    head_module = getattr(model, "lm_head", None)
    tied = head_module is None and "tok_emb.weight" in names
    head = HessianAccumulator()
    was_training = model.training
    model.eval()
    t0, done, cut = time.perf_counter(), 0, False
    try:
        with _fast_fp32_matmuls(device), torch.autocast(device.type, torch.bfloat16, enabled=autocast_bf16):
            for i, ids in enumerate(batches):
                if i % world_size != rank:
                    continue
                if done and seconds is not None:
                    elapsed = time.perf_counter() - t0
                    if elapsed + elapsed / done > seconds:
                        cut = True
                        break
                hidden = model.hidden_states(ids.to(device))  # (B, T, C)
                if tied:
                    head.add(hidden)
                elif head_module is not None:
                    model.logits_from_hidden(hidden)  # an untied head is a linear: its hook sees the hidden state
                shared.last = None
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                done += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if tied:
        acc["tok_emb.weight"] = head
    if world_size > 1:
        _all_reduce_accumulators(model, acc, linears, device, dist.all_reduce_sum_)
    tokens = max((a.count for a in acc.values()), default=0)
    return {name: a.mean() for name, a in acc.items() if a.count}, tokens, cut


def _all_reduce_accumulators(model: nn.Module, acc: dict[str, HessianAccumulator], linears: dict[str, nn.Linear],
                             device: torch.device, reduce: Callable[[Tensor], Tensor]) -> None:
    """Sum every accumulator over ranks (a rank that saw no batch contributes zeros)."""
    for name, a in sorted(acc.items()):
        width = linears[name].in_features if name in linears else int(model.tok_emb.weight.shape[1])
        total = a.sum if a.sum is not None else torch.zeros(width, width, device=device)
        count = torch.tensor([float(a.count)], device=device)
        reduce(total)
        reduce(count)
        a.sum, a.count = total, int(count.item())


# ---------------------------------------------------------------- calibration

@dataclass
class Calibration:
    """Hessians from calibration text and what they cost."""

    hessians: dict[str, Tensor]
    seconds: float
    num_tokens: int  # tokens the Hessians were averaged over, all ranks together
    source: str
    cut_short: bool = False  # the time bound left some of the planned batches out


class TrainingBatches(Protocol):
    """What calibration needs of a training loader (`pgolf.data.loader.DistributedTokenLoader`)."""

    def next_batch(self, micro_batch_tokens: int, seq_len: int) -> tuple[Tensor, Tensor]: ...


def training_batches(loader: TrainingBatches, num_batches: int, batch_tokens: int, seq_len: int) -> Iterator[Tensor]:
    """`num_batches` input batches (B, T) drawn lazily from a loader over TRAINING shards (never validation)."""
    for _ in range(num_batches):
        yield loader.next_batch(batch_tokens, seq_len)[0]


@torch.no_grad()
def self_generated_batches(model: nn.Module, *, num_seqs: int, seq_len: int, vocab_size: int, temperature: float,
                           seed: int, device: torch.device, batch_size: int = 8) -> list[Tensor]:
    """Calibration text sampled from the model itself (PR #1019's AR calibration): random first tokens,
    then `seq_len - 1` tokens sampled at `temperature`; no training or validation data is read."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batches = []
    model.eval()
    for start in range(0, num_seqs, batch_size):
        b = min(batch_size, num_seqs - start)
        ids = torch.randint(0, vocab_size, (b, 1), generator=gen)  # (b, 1)
        for _ in range(seq_len - 1):
            logits = model.forward_logits(ids.to(device))[:, -1].float().cpu()  # (b, V)
            probs = torch.softmax(logits / temperature, dim=-1)  # (b, V)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)  # (b, t+1)
        batches.append(ids)
    return batches


def calibrate(model: nn.Module, batches: Iterable[Tensor] | None, device: torch.device, *, names: Iterable[str],
              self_generate: dict[str, object] | None = None, autocast_bf16: bool = False,
              seconds: float | None = None, rank: int = 0, world_size: int = 1) -> Calibration:
    """Hessians of the quantised linears from training `batches`, or (when `self_generate` holds the
    keyword arguments of `self_generated_batches`) from text the model samples; timed. The keywords
    after `self_generate` are `collect_hessians`'s (bf16 forwards, a time bound, the split over ranks)."""
    t0 = time.perf_counter()
    if self_generate is not None:
        batches = self_generated_batches(model, device=device, **self_generate)  # type: ignore[arg-type]
        source = "self"
    else:
        assert batches is not None, "calibration needs training batches or self_generate"
        source = "train"
    left = None if seconds is None else seconds - (time.perf_counter() - t0)
    hessians, tokens, cut = _collect(model, batches, device, names, autocast_bf16=autocast_bf16, seconds=left,
                                     rank=rank, world_size=world_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Calibration(hessians=hessians, seconds=time.perf_counter() - t0, num_tokens=tokens, source=source,
                       cut_short=cut)


CALIBRATION_BATCH_SEQS = 8  # sequences per calibration forward pass


def calibration_for(model: nn.Module, cfg: RunConfig, names: list[str], *, seconds: float | None = None) -> Calibration:
    """GPTQ Hessians from the run's TRAINING shards (or self-generated text), timed: forwards in the run's
    dtype, the batches split over the ranks of a distributed run (each rank reads the same stream and
    forwards its share; the sums are all-reduced), at most `seconds` long when given."""
    import torch.distributed as torch_dist

    from pgolf import dist
    from pgolf.data.loader import DistributedTokenLoader
    from pgolf.data.shards import list_shards

    q = cfg.quant
    device = next(model.parameters()).device
    seq_len = q.gptq_seq_len or cfg.train.train_seq_len
    split = dict(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size()) if dist.is_active() else {}
    options = dict(autocast_bf16=dist.use_bf16(cfg.train.dtype, device), seconds=seconds)
    if q.gptq_calibration == "self":
        gen = {"num_seqs": q.gptq_batches, "seq_len": seq_len, "vocab_size": cfg.model.vocab_size,
               "temperature": q.gptq_temperature, "seed": cfg.train.seed}
        return calibrate(model, None, device, names=names, self_generate=gen, **options)  # type: ignore[arg-type]
    loader = DistributedTokenLoader(list_shards(cfg.dataset_dir, "train"), rank=0, world_size=1,
                                    vocab_size=cfg.model.vocab_size)
    sizes = [min(CALIBRATION_BATCH_SEQS, q.gptq_batches - i) for i in range(0, q.gptq_batches, CALIBRATION_BATCH_SEQS)]
    batches = (b for n in sizes for b in training_batches(loader, 1, n * seq_len, seq_len))
    return calibrate(model, batches, device, names=names, **options, **split)  # type: ignore[arg-type]
