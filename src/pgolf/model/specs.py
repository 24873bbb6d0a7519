"""Per-layer plan of the GPT: which physical block runs at each virtual position, and how.

Computed once from the config by a pure function, so a technique that differs between layers is a
field of `LayerSpec` read by one module instead of an argument threaded through constructors
(compare torchtitan's per-layer configs and nanochat's `layer_idx`).

Two indices matter and the records use both: per-block settings (XSA on the last N, value embeddings
on chosen layers, LN scale 1/sqrt(i+1), parallel residuals from layer K) follow the *physical* block
index, while the order of execution and the U-Net encoder/decoder split follow the *virtual* order,
which differs from the physical one under depth recurrence (openai/parameter-golf 2026-04-05 SP8192
record: loop layers 4-5 twice -> [0,1,2,3,4,5,4,5,4,5,6,...,10], split half/half, the decoder taking
the extra layer of an odd count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pgolf.config import ModelConfig

Side = Literal["encoder", "decoder"]
Residual = Literal["sequential", "gptj", "two_lane"]


@dataclass(frozen=True)
class LayerSpec:
    """One virtual layer of the plan (or, in the unlooped plan, one physical block)."""

    position: int
    """Index in the virtual order of the active plan."""
    block: int
    """Physical block whose parameters run here (shared between visits under depth recurrence)."""
    side: Side
    """U-Net half: encoder layers push their output as a skip, decoder layers may merge one."""
    skip_index: int
    """Decoder: row of skip_weights (and skip_gates) merged before the block; -1 for none."""
    skip_source: int
    """Decoder: encoder position whose output that skip carries (last pushed, first popped); -1 for none."""
    ln_scale: float
    """Factor on both sublayer norm outputs: 1/sqrt(block+1) with model.ln_scale, else 1."""
    xsa: bool
    """Exclusive self attention in this block (model.xsa_last_n)."""
    value_embed: bool
    """This block adds the shared value embedding to its values (model.value_embed_layers)."""
    residual: Residual
    """How the block updates the residual stream (model.parallel_residual from model.parallel_from)."""
    attn_gate: str
    """Attention output gate kind (model.attn_gate): off, headwise, output or sparse."""


def virtual_order(cfg: ModelConfig, looping: bool) -> list[int]:
    """Physical block index at each virtual position; [start..end] runs num_loops extra times when looping."""
    if not looping or cfg.num_loops == 0:
        return list(range(cfg.num_layers))
    loop = list(range(cfg.loop_start, cfg.loop_end + 1))
    return list(range(cfg.loop_start)) + loop * (cfg.num_loops + 1) + list(range(cfg.loop_end + 1, cfg.num_layers))


def num_encoder_layers(num_virtual: int) -> int:
    """Encoder share of a plan: the first half, the decoder taking the extra layer of an odd count."""
    return num_virtual // 2


def num_skip_weights(cfg: ModelConfig) -> int:
    """Rows of skip_weights: sized for the longest (looped) plan; the unlooped plan uses a prefix."""
    n = len(virtual_order(cfg, looping=True))
    return min(num_encoder_layers(n), n - num_encoder_layers(n))


def _residual_mode(cfg: ModelConfig, block: int, side: Side) -> Residual:
    if cfg.parallel_residual == "off" or block < cfg.parallel_from:
        return "sequential"
    if cfg.parallel_residual == "gptj":
        return "gptj"
    # the two-lane form lives in the decoder only (2026-03-31 and 2026-04-27 records)
    return "two_lane" if side == "decoder" else "sequential"


def layer_specs(cfg: ModelConfig, looping: bool) -> list[LayerSpec]:
    """The plan of a model: one spec per virtual layer, in execution order."""
    order = virtual_order(cfg, looping)
    num_enc = num_encoder_layers(len(order))
    num_skips = min(num_enc, len(order) - num_enc)
    xsa_from = cfg.num_layers - cfg.xsa_last_n if cfg.xsa_last_n > 0 else cfg.num_layers
    specs = []
    for pos, block in enumerate(order):
        side: Side = "encoder" if pos < num_enc else "decoder"
        dec = pos - num_enc
        has_skip = side == "decoder" and dec < num_skips
        specs.append(LayerSpec(
            position=pos,
            block=block,
            side=side,
            skip_index=dec if has_skip else -1,
            skip_source=num_enc - 1 - dec if has_skip else -1,
            ln_scale=1.0 / math.sqrt(block + 1) if cfg.ln_scale else 1.0,
            xsa=block >= xsa_from,
            value_embed=block in cfg.value_embed_layers,
            residual=_residual_mode(cfg, block, side),
            attn_gate=cfg.attn_gate,
        ))
    lanes = [spec.residual == "two_lane" for spec in specs]
    # once the two lanes open they run to the end (ModelConfig.validate refuses loops that would reopen them)
    assert lanes == sorted(lanes), "two-lane layers must form a suffix of the plan"
    return specs


def block_specs(cfg: ModelConfig) -> list[LayerSpec]:
    """One spec per physical block, in block order: what each block is built from."""
    return layer_specs(cfg, looping=False)
