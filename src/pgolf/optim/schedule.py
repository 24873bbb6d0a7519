"""Learning-rate and momentum schedules of the challenge baseline (openai/parameter-golf `train_gpt.py`).

No LR warm-up. The warmdown is wall-clock based when a budget is set: from the mean step time so far,
the last `warmdown_iters` steps are estimated to take warmdown_ms, and once the remaining budget is
below that the multiplier is remaining/warmdown_ms, reaching 0 exactly at the cap. Without a budget it
decays linearly over the last `warmdown_iters` iterations. Muon momentum warms up linearly.

Every schedule is a pure function of (step, elapsed training seconds) and the config: `schedule_at`
gives everything one step needs, so a resumed run recomputes it from the two saved counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgolf.config import OptimConfig, TrainConfig
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


def progress(step: int, elapsed_s: float, iterations: int, budget_s: float) -> float:
    """Fraction of training done in [0, 1]: of the step limit, or of the time budget when one is set,
    whichever is further along (training stops at whichever limit comes first)."""
    by_steps = step / max(iterations, 1)
    by_time = elapsed_s / budget_s if budget_s > 0 else 0.0
    return min(max(by_steps, by_time), 1.0)


@dataclass(frozen=True)
class SchedulePoint:
    """Everything the schedules say about one step."""

    lr_mul: float
    """Multiplier of every group's base LR."""
    warmdown_mul: float
    """The warm-down factor alone (1 before the warm-down)."""
    frac: float
    """Training progress in [0, 1]."""
    muon_momentum: float
    """Muon's momentum this step."""


def schedule_at(step: int, elapsed_s: float, optim: OptimConfig, train: TrainConfig, budget_s: float) -> SchedulePoint:
    """The schedules at `step` after `elapsed_s` training seconds, for a time budget of `budget_s` (0: none)."""
    warmdown = lr_multiplier(step=step, elapsed_ms=elapsed_s * 1000.0, max_wallclock_ms=budget_s * 1000.0,
                             warmdown_iters=train.warmdown_iters, iterations=train.iterations)
    return SchedulePoint(lr_mul=warmdown, warmdown_mul=warmdown,
                         frac=progress(step, elapsed_s, train.iterations, budget_s),
                         muon_momentum=muon_momentum_at(step, optim))


def apply_lr(optimizers: list[torch.optim.Optimizer], lr_mul: float, muon_momentum: float) -> None:
    """Set every group's lr to base_lr * lr_mul, and the momentum of Muon groups."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_mul
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum
