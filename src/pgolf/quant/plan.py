"""The export plan: one `TensorPlan` per tensor, from the parameter roles and `QuantConfig` (stage 1 of 4:
plan -> quantise -> pack -> fit to the budget).

The role table (`pgolf.model.roles.param_roles`) is the one the optimiser uses, so a tensor's
treatment follows from what it is, never from its name:

- scheme `int8_per_row` (the challenge baseline, `quantize_state_dict_int8`): non-floats pass through;
  floats with at most `keep_float_max_numel` elements stay float (control tensors fp32, others fp16);
  matrices get per-row int8 with the percentile clip (fp32 rounding scale, fp16 storage, floor 1/127);
  other floats one fp32 scale per tensor.
- scheme `intx`: controls stay float (`control_dtype`); gates int8 per row; embeddings, heads and tables
  at `embed_bits` with `embed_clip`; matrices at `matrix_bits` with `matrix_clip` (SDClip's k per group:
  MLP, attention or any matrix); small tensors below `keep_float_max_numel` stay fp16 as in the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from torch import Tensor, nn

from pgolf.config import QuantConfig
from pgolf.quant.layout import TensorPlan, dtype_name

BASELINE_QMAX_FLOOR = 1.0 / 127  # the baseline clamps per-row scales at 1/127
SCALE_FLOOR = 2.0 ** -14  # smallest normal fp16: a positive, exactly stored scale for all-zero rows
EMBED_ROLES = ("embedding", "head", "table")


def matrix_groups(model: nn.Module) -> dict[str, str]:
    """Weight name -> "mlp" or "attn" for linears owned by an MLP or an attention module (by type)."""
    from pgolf.model.attention import CausalSelfAttention
    from pgolf.model.gpt import MLP

    out: dict[str, str] = {}
    for owner_name, owner in model.named_modules():
        group = "mlp" if isinstance(owner, MLP) else "attn" if isinstance(owner, CausalSelfAttention) else None
        if group is None:
            continue
        for child_name, child in owner.named_modules():
            if isinstance(child, nn.Linear) and child_name:
                out[f"{owner_name}.{child_name}.weight" if owner_name else f"{child_name}.weight"] = group
    return out


def _baseline_plan(t: Tensor, role: str, cfg: QuantConfig) -> TensorPlan:
    shape, dtype = tuple(t.shape), dtype_name(t.dtype)
    if not t.is_floating_point():
        return TensorPlan(kind="passthrough", shape=shape, dtype=dtype, role=role, store_dtype=dtype)
    if t.numel() <= cfg.keep_float_max_numel:
        store = "float32" if role == "control" else "float16"
        return TensorPlan(kind="float", shape=shape, dtype=dtype, role=role, store_dtype=store)
    quantile = cfg.clip_percentile / 100.0
    if t.ndim == 2:
        return TensorPlan(kind="intx_row", shape=shape, dtype=dtype, role=role, bits=8, clip="percentile",
                          clip_values=(quantile,), scale_dtype="float16", scale_floor=BASELINE_QMAX_FLOOR,
                          rounding="fp32")
    return TensorPlan(kind="intx_tensor", shape=shape, dtype=dtype, role=role, bits=8, clip="percentile",
                      clip_values=(quantile,), scale_dtype="float32", rounding="fp32")


def _clip_values(rule: str, cfg: QuantConfig, ks: tuple[float, ...]) -> tuple[float, ...]:
    if rule == "percentile":
        return (cfg.clip_percentile / 100.0,)
    if rule == "gptq_lite":
        return tuple(cfg.gptq_lite_quantiles)
    return tuple(ks)


def _intx_plan(t: Tensor, role: str, group: str, cfg: QuantConfig) -> TensorPlan:
    shape, dtype = tuple(t.shape), dtype_name(t.dtype)
    common = {"shape": shape, "dtype": dtype, "role": role, "byte_shuffle": cfg.byte_shuffle}
    if not t.is_floating_point():
        return TensorPlan(kind="passthrough", store_dtype=dtype, **common)
    if role == "control":
        return TensorPlan(kind="float", store_dtype=cfg.control_dtype, **common)
    if role != "gate" and t.numel() <= cfg.keep_float_max_numel:
        return TensorPlan(kind="float", store_dtype="float16", **common)
    if role == "gate":
        bits, rule, ks = cfg.gate_bits, "percentile", cfg.sdclip_k
    elif role in EMBED_ROLES:
        bits, rule, ks = cfg.embed_bits, cfg.embed_clip, cfg.sdclip_k_embed
    else:
        ks = {"mlp": cfg.sdclip_k_mlp, "attn": cfg.sdclip_k_attn}.get(group, ()) or cfg.sdclip_k
        bits, rule = cfg.matrix_bits, cfg.matrix_clip
    clip_values = _clip_values(rule, cfg, ks)
    if t.ndim != 2:
        return TensorPlan(kind="intx_tensor", bits=bits, clip="percentile", clip_values=(cfg.clip_percentile / 100.0,),
                          scale_dtype="float32", rounding="stored", **common)
    group_size = cfg.group_size if cfg.group_size and shape[1] % cfg.group_size == 0 else 0
    return TensorPlan(kind="intx_row", bits=bits, clip=rule, clip_values=clip_values,  # type: ignore[arg-type]
                      scale_dtype="float16", scale_floor=SCALE_FLOOR, rounding="stored", group_size=group_size,
                      packing=cfg.packing, transpose=cfg.transpose_codes, gptq=cfg.gptq, **common)


def plan_export(model_or_state: nn.Module | Mapping[str, Tensor], roles: Mapping[str, str], cfg: QuantConfig,
                sensitivity: Mapping[str, float] | None = None) -> dict[str, TensorPlan]:
    """Name -> TensorPlan for every tensor of the state dict, in state-dict order.

    `roles` is `param_roles(model)`; every float tensor needs one. `sensitivity` does not change the
    plan here (bits follow it only when `fit_to_budget` allocates them); it is accepted so the stages
    share one signature."""
    cfg.validate()
    is_model = isinstance(model_or_state, nn.Module)
    state = model_or_state.state_dict() if is_model else dict(model_or_state)
    groups = matrix_groups(model_or_state) if is_model else {}
    plans: dict[str, TensorPlan] = {}
    for name, t in state.items():
        role = roles.get(name, "")
        if t.is_floating_point() and not role:
            raise ValueError(f"tensor {name} has no role; build the role table with pgolf.model.roles.param_roles")
        if cfg.scheme == "int8_per_row":
            plan = _baseline_plan(t, role, cfg)
        else:
            plan = _intx_plan(t, role, groups.get(name, ""), cfg)
        if cfg.scheme == "int8_per_row" and (cfg.packing != "int8" or cfg.byte_shuffle or cfg.transpose_codes):
            plan = replace(plan, packing=cfg.packing, byte_shuffle=cfg.byte_shuffle,
                           transpose=cfg.transpose_codes and plan.kind == "intx_row")
        plans[name] = plan
    return plans
