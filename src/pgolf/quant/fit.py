"""Stage 4 of the export: fit the artifact to the byte budget.

Target = budget - counted code bytes (given by the caller) - quant.margin_bytes. Two searches, both
optional and both deterministic:

- Sensitivity-guided bits (PR #332's gradient-guided int5..int8): every eligible tensor starts at
  quant.max_bits; a table of each tensor's estimated bytes (order-0 entropy of its codes) and error
  at every width (round to nearest, cheap) drives a greedy descent that lowers, one bit at a time,
  the tensor whose step costs the least error per byte saved, until the estimate fits. The error is
  sensitivity x squared error (a diagonal Fisher estimate of the loss increase, when the trainer
  saved mean squared gradients), else the Hessian-weighted output error, else the plain squared
  error. The real packed size then replaces the estimate, and the descent continues while it is
  over; bytes left over are spent raising the tensors that gain most per byte, each raise checked
  against the real size.
- Selective +-1 pruning (PR #609): among codes equal to +-1, zero those whose loss costs least
  (scale² x the input's Hessian diagonal, or scale² alone); binary search on their count for the
  smallest one that fits.

When the budget cannot be met the error names the bytes of the largest tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from pgolf.config import QuantConfig
from pgolf.errors import UserError
from pgolf.quant.layout import QuantizedTensor, TensorPlan, expand_scales
from pgolf.quant.pack import codec_choices, compress_best, encode_stream, order0_entropy_bits, pack
from pgolf.quant.quantize import GPTQOptions, quantize

ALLOCATED_ROLES = ("matrix", "embedding", "head", "table")
MAX_REFINEMENTS = 64  # real-size checks after the estimated descent (each lowers one tensor by one bit)
MAX_FILL = 16  # real-size checks when spending left-over bytes on one more bit


class BudgetError(UserError):
    """The artifact cannot be made to fit; `table` holds the per-tensor bytes (name, role, bits, bytes)."""

    def __init__(self, message: str, table: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.table = table


@dataclass
class FitResult:
    """The fitted artifact bytes and how they were reached."""

    blob: bytes
    compressor: str
    plans: dict[str, TensorPlan]
    quantized: dict[str, QuantizedTensor]
    codec: tuple[str, int]
    target_bytes: int
    pruned: int
    bits: dict[str, int]


@dataclass
class Packer:
    """Packs quantised tensors with fixed metadata, configs and codec; applies LQER on the way."""

    state: Mapping[str, Tensor]
    cfg: QuantConfig
    codec: list[tuple[str, int]]
    header: dict[str, Any]
    lqer_names: list[str] | None = None
    factors: dict[str, Any] = field(default_factory=dict)  # GPTQ's Hessian factors, one per tensor, kept across re-quantisations

    def finish(self, quantized: dict[str, QuantizedTensor]) -> dict[str, QuantizedTensor]:
        """LQER corrections (on the same tensors once chosen, so pruning cannot move them)."""
        if not self.cfg.lqer_rank:
            return quantized
        from pgolf.quant.lqer import add_lqer  # shipped only with quant.lqer_rank

        c = self.cfg
        plans, parts = add_lqer(self.state, {n: q.plan for n, q in quantized.items()},
                                {n: q.parts for n, q in quantized.items()}, rank=c.lqer_rank, top_k=c.lqer_top_k,
                                a_bits=c.lqer_a_bits, b_bits=c.lqer_b_bits, group_size=c.lqer_group_size,
                                only=self.lqer_names)
        if self.lqer_names is None:
            self.lqer_names = [n for n, p in plans.items() if p.lqer_rank]
        return {n: QuantizedTensor(plan=plans[n], parts=parts[n]) for n in plans}

    def pack(self, quantized: dict[str, QuantizedTensor]) -> tuple[bytes, str, dict[str, QuantizedTensor]]:
        final = self.finish(quantized)
        blob, name = pack(final, self.codec, **self.header)
        return blob, name, final


# ---------------------------------------------------------------- bits

def tensor_error(w: Tensor, q: QuantizedTensor, hessian: Tensor | None, sensitivity: float | None) -> float:
    """Loss-increase proxy of one quantised tensor (see the module docstring)."""
    e = (w.detach().float().cpu() - q.restore().float())  # (R, C)
    if sensitivity is not None:
        return sensitivity * float(e.double().square().sum())
    if hessian is not None:
        h = hessian.double().cpu()
        return float(((e.double() @ h) * e.double()).sum())
    return float(e.double().square().sum())


def estimated_bytes(q: QuantizedTensor) -> int:
    """The allocation's size estimate of a tensor's codes: their order-0 entropy, which the compressors
    reach within a few percent on codes stored one per byte, at a fraction of the cost of compressing."""
    return math.ceil(order0_entropy_bits(q.parts["q"]) / 8)


def bit_table(state: Mapping[str, Tensor], plans: Mapping[str, TensorPlan], names: list[str], cfg: QuantConfig,
              hessians: Mapping[str, Tensor], sensitivity: Mapping[str, float] | None,
              ) -> dict[str, dict[int, tuple[int, float]]]:
    """name -> bits -> (estimated bytes, error) by round to nearest, for every allowed width."""
    table: dict[str, dict[int, tuple[int, float]]] = {}
    for name in names:
        table[name] = {}
        sens = None if sensitivity is None else float(sensitivity.get(name, 0.0))
        for bits in range(cfg.min_bits, cfg.max_bits + 1):
            plan = replace(plans[name], bits=bits, gptq=False)
            q = quantize({name: state[name]}, {name: plan})[name]
            table[name][bits] = (estimated_bytes(q), tensor_error(state[name], q, hessians.get(name), sens))
    return table


def next_step(bits: dict[str, int], table: dict[str, dict[int, tuple[int, float]]], min_bits: int) -> str | None:
    """The tensor whose next bit down costs the least error per byte saved (None when all are at min)."""
    best: tuple[float, str] | None = None
    for name in sorted(bits):
        b = bits[name]
        if b <= min_bits:
            continue
        (bytes_hi, err_hi), (bytes_lo, err_lo) = table[name][b], table[name][b - 1]
        saved = max(bytes_hi - bytes_lo, 1)
        ratio = max(err_lo - err_hi, 0.0) / saved
        if best is None or ratio < best[0]:
            best = (ratio, name)
    return None if best is None else best[1]


def eligible_for_bits(plans: Mapping[str, TensorPlan]) -> list[str]:
    return [n for n, p in plans.items() if p.kind == "intx_row" and p.role in ALLOCATED_ROLES]


def with_bits(plans: Mapping[str, TensorPlan], bits: Mapping[str, int]) -> dict[str, TensorPlan]:
    return {n: replace(p, bits=bits[n]) if n in bits else p for n, p in plans.items()}


def allocate_bits(packer: Packer, plans: dict[str, TensorPlan], quantized: dict[str, QuantizedTensor], blob: bytes,
                  target: int, hessians: Mapping[str, Tensor], sensitivity: Mapping[str, float] | None,
                  options: GPTQOptions) -> tuple[dict[str, TensorPlan], dict[str, QuantizedTensor], bytes, str,
                                                 dict[str, QuantizedTensor]]:
    """Lower bits from the packed all-max_bits artifact (`quantized`, `blob`) until it fits `target`, if any
    allocation does; returns (plans, quantized, blob, compressor, final tensors with LQER)."""
    cfg = packer.cfg
    bits = {n: plans[n].bits for n in eligible_for_bits(plans)}
    table = bit_table(packer.state, plans, list(bits), cfg, hessians, sensitivity)
    comp, final = packer.codec[0][0], packer.finish(quantized)
    for _ in range(MAX_REFINEMENTS):
        if len(blob) <= target:
            break
        estimate, changed = len(blob), []
        while estimate > target and (name := next_step(bits, table, cfg.min_bits)) is not None:
            estimate -= table[name][bits[name]][0] - table[name][bits[name] - 1][0]
            bits[name] -= 1
            changed.append(name)
        if not changed:  # every tensor is at min_bits
            break
        plans = with_bits(plans, bits)
        quantized = {**quantized, **quantize(packer.state, {n: plans[n] for n in dict.fromkeys(changed)}, hessians,
                                             options, packer.factors)}
        blob, comp, final = packer.pack(quantized)
    if len(blob) <= target:
        plans, quantized, blob, comp, final = fill_bits(packer, plans, quantized, (blob, comp, final), bits, table,
                                                        target, hessians, options)
    return plans, quantized, blob, comp, final


def fill_bits(packer: Packer, plans: dict[str, TensorPlan], quantized: dict[str, QuantizedTensor],
              packed: tuple[bytes, str, dict[str, QuantizedTensor]], bits: dict[str, int],
              table: dict[str, dict[int, tuple[int, float]]], target: int, hessians: Mapping[str, Tensor],
              options: GPTQOptions) -> tuple[dict[str, TensorPlan], dict[str, QuantizedTensor], bytes, str,
                                             dict[str, QuantizedTensor]]:
    """Spend the bytes the descent left over: raise tensors one bit, best error saved per byte first,
    while the estimate fits; each raise is kept only if the real packed size still fits."""
    blob, comp, final = packed
    ups = [n for n in bits if bits[n] < packer.cfg.max_bits]
    gain = {n: (table[n][bits[n]][1] - table[n][bits[n] + 1][1]) / max(table[n][bits[n] + 1][0] - table[n][bits[n]][0], 1)
            for n in ups}
    for name in sorted(ups, key=lambda n: (-gain[n], n))[:MAX_FILL]:
        extra = table[name][bits[name] + 1][0] - table[name][bits[name]][0]
        if len(blob) + extra > target:
            continue
        trial_plans = with_bits(plans, {**bits, name: bits[name] + 1})
        trial = {**quantized, **quantize(packer.state, {name: trial_plans[name]}, hessians, options, packer.factors)}
        b, c, f = packer.pack(trial)
        if len(b) <= target:
            bits[name] += 1
            plans, quantized, blob, comp, final = trial_plans, trial, b, c, f
    return plans, quantized, blob, comp, final


# ---------------------------------------------------------------- pruning

def pruning_candidates(quantized: Mapping[str, QuantizedTensor], hessians: Mapping[str, Tensor]) -> tuple[list[str], Tensor, Tensor]:
    """(tensor names, tensor id per candidate, flat index per candidate), cheapest first: every code
    equal to +-1 in an intx_row tensor, costing scale² x (diag H of its input, or 1)."""
    names, ids, idx, costs = [], [], [], []
    for name, q in quantized.items():
        if q.plan.kind != "intx_row":
            continue
        codes = q.parts["q"]  # (R, C)
        ones = (codes.abs() == 1).reshape(-1).nonzero().squeeze(1)  # (n,)
        if not ones.numel():
            continue
        scale2 = expand_scales(q.parts["scale"], q.plan).double().square()  # (R, C)
        h = hessians.get(name)
        weight = torch.diagonal(h.double().cpu())[None, :].expand_as(scale2) if h is not None else 1.0  # (R, C)
        cost = (scale2 * weight).reshape(-1)[ones]  # (n,)
        names.append(name)
        ids.append(torch.full_like(ones, len(names) - 1))
        idx.append(ones)
        costs.append(cost)
    if not names:
        return [], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    order = torch.argsort(torch.cat(costs), stable=True)
    return names, torch.cat(ids)[order], torch.cat(idx)[order]


def apply_pruning(quantized: Mapping[str, QuantizedTensor], names: list[str], ids: Tensor, idx: Tensor,
                  count: int) -> dict[str, QuantizedTensor]:
    """A copy of `quantized` with the first `count` candidates set to 0."""
    out = dict(quantized)
    for i, name in enumerate(names):
        chosen = idx[:count][ids[:count] == i]
        if not chosen.numel():
            continue
        q = quantized[name]
        codes = q.parts["q"].clone()
        codes.view(-1)[chosen] = 0
        out[name] = QuantizedTensor(plan=q.plan, parts={**q.parts, "q": codes})
    return out


def prune_to_fit(packer: Packer, quantized: dict[str, QuantizedTensor], target: int, hessians: Mapping[str, Tensor],
                 ) -> tuple[int, bytes, str, dict[str, QuantizedTensor]] | None:
    """The fewest pruned +-1 codes that make the artifact fit, by binary search; None if even all do not."""
    names, ids, idx = pruning_candidates(quantized, hessians)
    lo, hi = 0, int(idx.numel())
    blob, comp, final = packer.pack(apply_pruning(quantized, names, ids, idx, hi))
    if len(blob) > target:
        return None
    best = (hi, blob, comp, final)
    while lo < hi:
        mid = (lo + hi) // 2
        b, c, f = packer.pack(apply_pruning(quantized, names, ids, idx, mid))
        if len(b) <= target:
            hi, best = mid, (mid, b, c, f)
        else:
            lo = mid + 1
    return best


# ---------------------------------------------------------------- driver

def byte_table(quantized: Mapping[str, QuantizedTensor], codec: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """Per tensor: role, kind, bits and the bytes of its streams compressed alone, largest first."""
    rows = []
    for name, q in quantized.items():
        streams = [encode_stream(q, part) for part in q.parts]
        rows.append({"name": name, "role": q.plan.role, "kind": q.plan.kind, "bits": q.plan.bits,
                     "compressed_bytes": sum(len(compress_best(s, codec)[2]) for s in streams if s)})
    return sorted(rows, key=lambda r: (-r["compressed_bytes"], r["name"]))


def budget_error(blob_len: int, target: int, code_bytes: int, cfg: QuantConfig, quantized: Mapping[str, QuantizedTensor],
                 codec: Sequence[tuple[str, int]]) -> BudgetError:
    table = byte_table(quantized, codec)
    top = ", ".join(f"{r['name']} {r['compressed_bytes']:,} B ({r['kind']} {r['bits']}b)" for r in table[:4])
    budget = target + code_bytes + cfg.margin_bytes
    hints = ["lower quant.min_bits" if cfg.allocate_bits else "lower quant.matrix_bits/embed_bits or enable "
             "quant.allocate_bits"] + ([] if cfg.prune else ["enable quant.prune"]) + ["shrink the model"]
    return BudgetError(f"the artifact is {blob_len + code_bytes:,} bytes (code {code_bytes:,} + model {blob_len:,}), "
                       f"over the {budget:,} byte budget less the {cfg.margin_bytes:,} byte margin by "
                       f"{blob_len - target:,}; largest tensors: {top}; {', '.join(hints)}", table)


def fit_to_budget(state: Mapping[str, Tensor], plans: dict[str, TensorPlan], cfg: QuantConfig, *, budget_bytes: int,
                  code_bytes: int, header: dict[str, Any], hessians: Mapping[str, Tensor] | None = None,
                  sensitivity: Mapping[str, float] | None = None, options: GPTQOptions = GPTQOptions()) -> FitResult:
    """Quantise, pack and (as the config asks) search bits and pruning so that file + code bytes land at or
    under `budget_bytes - cfg.margin_bytes`; BudgetError when that cannot be met and the config enforces it.
    `header` holds the payload's `meta`, `model_config` and `run_config`."""
    hessians = hessians or {}
    target = budget_bytes - code_bytes - cfg.margin_bytes
    packer = Packer(state=state, cfg=cfg, codec=codec_choices(cfg.compressor, cfg.level), header=header)
    if cfg.allocate_bits:
        plans = with_bits(plans, {n: cfg.max_bits for n in eligible_for_bits(plans)})
    quantized = quantize(state, plans, hessians, options, packer.factors)
    blob, comp, final = packer.pack(quantized)
    packer.codec = [(comp, dict(packer.codec)[comp])]  # `best` is decided once, on the first pack
    if cfg.allocate_bits and len(blob) > target:
        plans, quantized, blob, comp, final = allocate_bits(packer, plans, quantized, blob, target, hessians,
                                                            sensitivity, options)
    pruned = 0
    if cfg.prune and len(blob) > target:
        found = prune_to_fit(packer, quantized, target, hessians)
        if found is not None:
            pruned, blob, comp, final = found
    if len(blob) > target and cfg.fits_budget:
        raise budget_error(len(blob), target, code_bytes, cfg, final, packer.codec)
    bits = {n: q.plan.bits for n, q in final.items() if q.plan.is_int}
    return FitResult(blob=blob, compressor=comp, plans={n: q.plan for n, q in final.items()}, quantized=final,
                     codec=packer.codec[0], target_bytes=target, pruned=pruned, bits=bits)
