"""Learning-rate and momentum schedules of the challenge baseline (openai/parameter-golf `train_gpt.py`).

No LR warm-up. The warmdown is wall-clock based when a budget is set: from the mean step time so far,
the last `warmdown_iters` steps are estimated to take warmdown_ms, and once the remaining budget is
below that the multiplier is remaining/warmdown_ms, reaching 0 exactly at the cap. Without a budget it
decays linearly over the last `warmdown_iters` iterations. Muon momentum warms up linearly.
"""

from __future__ import annotations

import torch

from pgolf.config import OptimConfig
from pgolf.optim.muon import Muon


def muon_momentum_at(step: int, cfg: OptimConfig) -> float:
    """Muon momentum at `step`: linear from muon_momentum_warmup_start to muon_momentum."""
    steps = cfg.muon_momentum_warmup_steps
    frac = min(step / steps, 1.0) if steps > 0 else 1.0
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def lr_multiplier(*, step: int, elapsed_ms: float, max_wallclock_ms: float, warmdown_iters: int,
                  iterations: int) -> float:
    """Factor applied to every base LR at `step`, after `elapsed_ms` of training; 1 outside the warmdown."""
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_ms <= 0:
        warmdown_start = max(iterations - warmdown_iters, 0)
        if step < warmdown_start:
            return 1.0
        return max((iterations - step) / max(warmdown_iters, 1), 0.0)
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = warmdown_iters * step_ms
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def apply_lr(optimizers: list[torch.optim.Optimizer], lr_mul: float, muon_momentum: float) -> None:
    """Set every group's lr to base_lr * lr_mul, and the momentum of Muon groups."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_mul
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum
