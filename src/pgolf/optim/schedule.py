"""Learning-rate, momentum and weight-decay schedules: the challenge baseline's and the records'.

Baseline (openai/parameter-golf `train_gpt.py`): no LR warm-up. The warmdown is wall-clock based when a
budget is set: from the mean step time so far, the last `warmdown_iters` steps are estimated to take
warmdown_ms, and once the remaining budget is below that the multiplier is remaining/warmdown_ms,
reaching 0 exactly at the cap. Without a budget it decays linearly over the last `warmdown_iters`
iterations. Muon momentum warms up linearly.

Records (all off by default): the warm-down as the last `train.warmdown_frac` of training progress
(0.667 -> 0.85 in the SP8192 line), an LR floor `optim.min_lr_frac` (0.1; the multiplier is
max(floor, warm-down)), an LR warm-up (by steps or by progress), and a weight-decay taper (full decay
until `optim.wd_taper_start_frac` of training, then linear to `optim.wd_taper_final` x; PR of 04-18).

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
    wd_mul: float = 1.0
    """Multiplier of every group's base weight decay (the taper)."""


def warmdown_by_fraction(frac: float, warmdown_frac: float) -> float:
    """Linear from 1 to 0 over the last `warmdown_frac` of training progress."""
    start = 1.0 - warmdown_frac
    return 1.0 if frac < start else max((1.0 - frac) / max(warmdown_frac, 1e-9), 0.0)


def lr_warmup(step: int, frac: float, cfg: OptimConfig) -> float:
    """The LR warm-up factor: (step+1)/N over N steps, or progress/f over a fraction f; 1 without one."""
    if cfg.lr_warmup_steps > 0:
        return min((step + 1) / cfg.lr_warmup_steps, 1.0)
    if cfg.lr_warmup_frac > 0:
        return min(frac / cfg.lr_warmup_frac, 1.0)
    return 1.0


def wd_taper(frac: float, cfg: OptimConfig) -> float:
    """1 until `wd_taper_start_frac` of training, then linear to `wd_taper_final` at the end."""
    start = cfg.wd_taper_start_frac
    if start >= 1.0 or frac <= start:
        return 1.0
    t = min((frac - start) / (1.0 - start), 1.0)
    return 1.0 + (cfg.wd_taper_final - 1.0) * t


def schedule_at(step: int, elapsed_s: float, optim: OptimConfig, train: TrainConfig, budget_s: float) -> SchedulePoint:
    """The schedules at `step` after `elapsed_s` training seconds, for a time budget of `budget_s` (0: none)."""
    frac = progress(step, elapsed_s, train.iterations, budget_s)
    if train.warmdown_frac > 0:
        warmdown = warmdown_by_fraction(frac, train.warmdown_frac)
    else:
        warmdown = lr_multiplier(step=step, elapsed_ms=elapsed_s * 1000.0, max_wallclock_ms=budget_s * 1000.0,
                                 warmdown_iters=train.warmdown_iters, iterations=train.iterations)
    # Written so that with every switch off the multiplier is exactly the baseline's warmdown value.
    lr_mul = max(warmdown, optim.min_lr_frac) if optim.min_lr_frac > 0 else warmdown
    warmup = lr_warmup(step, frac, optim)
    if warmup < 1.0:
        lr_mul *= warmup
    return SchedulePoint(lr_mul=lr_mul, warmdown_mul=warmdown, frac=frac, muon_momentum=muon_momentum_at(step, optim),
                         wd_mul=wd_taper(frac, optim))


def apply_lr(optimizers: list[torch.optim.Optimizer], lr_mul: float, muon_momentum: float,
             wd_mul: float = 1.0) -> None:
    """Set every group's lr to base_lr * lr_mul, its decoupled decay to base_wd * wd_mul, and the
    momentum of Muon groups."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_mul
            if "base_wd" in group:
                group["wd"] = group["base_wd"] * wd_mul
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum
