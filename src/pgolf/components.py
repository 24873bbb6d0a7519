"""Training components: state the Trainer owns beside the model and optimisers, updated after every
optimiser step (weight averages, gradient statistics, switches that flip at a point of training).

Every component has `update(event)`, `state_dict()` / `load_state_dict()` and a no-op form when its
switch is off (`Disabled`). The Trainer iterates its components for the warm-up undo and for
checkpoints, so a new component's state can neither leak the warm-up steps nor be forgotten by a
resume. `update` runs after the optimiser step and before the gradients are cleared, so a component
may read `p.grad` (the gradients the optimiser used, after clipping).

`build_components(cfg, model)` is the one place the Trainer's list is made: weight averages first
(the first one that offers weights to export wins, see `pgolf.optim.averaging`), then statistics and
switches. Late QAT and the depth-recurrence switch belong here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pgolf.config import RunConfig


@dataclass(frozen=True)
class StepEvent:
    """What a component learns after each optimiser step."""

    step: int
    """Optimiser steps completed, counting this one (1 after the first step)."""
    lr_mul: float
    """The LR multiplier this step used (warm-up, warm-down and floor applied)."""
    warmdown_mul: float
    """The warm-down factor alone (1 before the warm-down, falling to 0 at its end; no floor)."""
    frac: float
    """Training progress in [0, 1] that the schedules read (see `pgolf.optim.schedule.progress`)."""
    elapsed_s: float
    """Training seconds spent before this step."""


class Component:
    """The no-op component; real components override what they need."""

    name: str = "component"

    def update(self, event: StepEvent) -> None:
        """Called after every optimiser step (warm-up steps included; the warm-up undo restores state)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain JSON values, nested freely."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output."""

    def export_state(self) -> dict[str, torch.Tensor] | None:
        """A full model state dict to export instead of the live weights, or None."""
        return None

    def describe(self) -> str:
        """A short label for the run log."""
        return self.name


class Disabled(Component):
    """A switched-off component: keeps its name (so checkpoints list the same entries) and does nothing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self) -> str:
        return f"{self.name} off"


class SwitchAtThreshold(Component):
    """Calls `switch(True)` once, after the first step whose progress reaches `at_frac` (or whose LR
    multiplier falls below `below_lr_mul`). Restoring a state calls `switch(fired)`, so the model
    follows a resume (on again) and the warm-up undo (off again)."""

    def __init__(self, name: str, switch: Callable[[bool], None], *, at_frac: float | None = None,
                 below_lr_mul: float | None = None) -> None:
        if (at_frac is None) == (below_lr_mul is None):
            raise ValueError("SwitchAtThreshold needs exactly one of at_frac and below_lr_mul")
        self.name = name
        self.switch = switch
        self.at_frac = at_frac
        self.below_lr_mul = below_lr_mul
        self.fired = False
        self.fired_at_step = -1

    def update(self, event: StepEvent) -> None:
        if self.fired:
            return
        crossed = (event.frac >= self.at_frac if self.at_frac is not None
                   else event.lr_mul < float(self.below_lr_mul or 0.0))
        if crossed:
            self.fired, self.fired_at_step = True, event.step
            self.switch(True)

    def state_dict(self) -> dict[str, Any]:
        return {"fired": self.fired, "fired_at_step": self.fired_at_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fired, self.fired_at_step = bool(state["fired"]), int(state["fired_at_step"])
        self.switch(self.fired)

    def describe(self) -> str:
        when = f"progress >= {self.at_frac}" if self.at_frac is not None else f"lr_mul < {self.below_lr_mul}"
        return f"{self.name} when {when}"


class GradientSensitivity(Component):
    """Mean squared gradient of every parameter tensor over the last `frac` of the warm-down (the steps
    whose warm-down factor is below 1 and at most `frac`): a free per-tensor sensitivity estimate for the
    quantiser (the diagonal-Fisher proxy of gradient-guided quantisation), summed on the device without
    a host sync per step."""

    name = "sensitivity"

    def __init__(self, model: nn.Module, frac: float) -> None:
        self.frac = frac
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        device = self.params[0].device
        self.sums = torch.zeros(len(self.params), dtype=torch.float32, device=device)
        self.count = 0

    def update(self, event: StepEvent) -> None:
        if not (event.warmdown_mul < 1.0 and event.warmdown_mul <= self.frac):
            return
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.sums[i] += p.grad.detach().float().square().mean()
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])

    def result(self) -> dict[str, float]:
        """{parameter name: mean over the accumulated steps of mean(grad^2)}; empty before any step."""
        if self.count == 0:
            return {}
        values = (self.sums / self.count).tolist()
        return dict(zip(self.names, values))

    def describe(self) -> str:
        return f"sensitivity over the last {self.frac:g} of the warm-down"


def build_components(cfg: RunConfig, model: nn.Module) -> list[Component]:
    """The Trainer's components for a config, switched-off ones as `Disabled`. Order matters: the first
    component offering weights to export wins (EMA before SWA)."""
    tc = cfg.train
    if tc.ema_decay > 0 or tc.swa_every > 0:  # imported only then: a feature module of the bundle
        from pgolf.optim.averaging import EMA, SWA
    return [
        EMA(model, tc.ema_decay) if tc.ema_decay > 0 else Disabled("ema"),
        SWA(model, tc.swa_every, tc.swa_lr_threshold) if tc.swa_every > 0 else Disabled("swa"),
        GradientSensitivity(model, tc.sensitivity_frac) if tc.sensitivity_frac > 0 else Disabled("sensitivity"),
        looping_switch(cfg, model),
        qat_component(cfg, model),
    ]


def qat_component(cfg: RunConfig, model: nn.Module) -> Component:
    """Late QAT (`train.qat_threshold`): the export's fake quantisation switched on below that LR multiplier."""
    if cfg.train.qat_threshold <= 0:
        return Disabled("qat")
    from pgolf.quant.qat import qat_switch

    return SwitchAtThreshold("qat", qat_switch(model, cfg), below_lr_mul=cfg.train.qat_threshold)


def looping_switch(cfg: RunConfig, model: nn.Module) -> Component:
    """Depth recurrence from a fraction of training (`model.loop_enable_frac`): the model trains its
    early part with one pass per block, then the looped virtual order (and is exported looped)."""
    m = cfg.model
    if m.num_loops <= 0 or m.loop_enable_frac <= 0:
        return Disabled("looping")
    model.set_looping(False)
    return SwitchAtThreshold("looping", model.set_looping, at_frac=m.loop_enable_frac)
