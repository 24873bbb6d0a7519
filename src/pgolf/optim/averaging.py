"""Weight averages exported instead of the live weights: EMA and tight SWA (parameter-golf records of
2026-03-22 onward, `train_gpt_human.py::train_model`).

- EMA: an fp32 shadow of every parameter, updated after every step, ema = d * ema + (1 - d) * w, started
  from the initial weights (d = 0.997, later 0.9965).
- Tight SWA: the plain mean of the weights taken every `every` steps while the LR multiplier is below
  a threshold (0.2: the tail of the warm-down).

Both average parameters only (the floating, trained state); any other entry of the model's state dict
(buffers) is copied from the live model when the weights are exported. When both are on, the EMA is
exported (the Trainer takes the first component that offers weights, and EMA is listed first), as in
the records that ran both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgolf.components import Component, StepEvent


def _floating_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


def _export(model: nn.Module, averages: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict with the averaged parameters in their own dtypes, other entries copied."""
    return {k: (averages[k].to(v.dtype) if k in averages else v.detach().clone()) for k, v in model.state_dict().items()}


class EMA(Component):
    """Exponential moving average of the parameters in fp32, updated every step."""

    name = "ema"

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must lie in (0, 1)")
        self.model = model
        self.decay = decay
        named = _floating_params(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, event: StepEvent) -> None:
        weights = [p.detach().float() for p in self.params]
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, weights, alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(zip(self.names, self.shadow))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, tensor in zip(self.names, self.shadow):
            tensor.copy_(state["shadow"][name])

    def export_state(self) -> dict[str, torch.Tensor]:
        return _export(self.model, dict(zip(self.names, self.shadow)))

    def describe(self) -> str:
        return f"ema decay {self.decay:g}"


class SWA(Component):
    """Mean of the parameters every `every` steps while the LR multiplier is below `lr_threshold`."""

    name = "swa"

    def __init__(self, model: nn.Module, every: int, lr_threshold: float) -> None:
        if every < 1:
            raise ValueError(f"SWA interval {every} must be >= 1")
        self.model = model
        self.every = every
        self.lr_threshold = lr_threshold
        named = _floating_params(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.count = 0

    @torch.no_grad()
    def update(self, event: StepEvent) -> None:
        if event.lr_mul < self.lr_threshold and event.step % self.every == 0:
            torch._foreach_add_(self.sums, [p.detach().float() for p in self.params])
            self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(zip(self.names, self.sums)), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, tensor in zip(self.names, self.sums):
            tensor.copy_(state["sums"][name])
        self.count = int(state["count"])

    def export_state(self) -> dict[str, torch.Tensor] | None:
        if self.count == 0:
            return None  # the run ended before the threshold: nothing was averaged
        return _export(self.model, {n: s / self.count for n, s in zip(self.names, self.sums)})

    def describe(self) -> str:
        return f"swa every {self.every} steps below lr_mul {self.lr_threshold:g}"
