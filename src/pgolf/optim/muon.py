"""Muon: Newton-Schulz orthogonalised Nesterov momentum for 2-D weights (Keller Jordan, 2024).

As in the challenge baseline (openai/parameter-golf `train_gpt.py`, from modded-nanogpt): the quintic
iteration runs in bf16 (float32 where bf16 is not native) and maps every singular value into roughly [0.5, 1.5] rather than exactly 1;
updates are scaled by sqrt(max(1, rows/cols)); there is no weight decay. The work is sharded across
ranks (parameter i belongs to rank i % world_size) and summed into every rank through one all-reduce
of a flat bf16 buffer; on one process the communication is skipped and the same code path runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as tdist

from pgolf import dist

# Quintic coefficients chosen to maximise the slope at 0 (modded-nanogpt).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def zeropower_newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                            dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate U V^T of a 2-D matrix G = U S V^T, in `dtype`, with `steps` quintic iterations."""
    assert G.ndim == 2, f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}"
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)  # (R, C)
    X = X / (X.norm() + eps)  # Frobenius norm 1 bounds the spectral norm by 1
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T  # (C, R): iterate on the short side so A is the smaller Gram matrix
    for _ in range(steps):
        A = X @ X.T  # (r, r)
        B = b * A + c * A @ A  # (r, r)
        X = a * X + B @ X
    return X.T if transposed else X


def muon_scale(shape: torch.Size) -> float:
    """sqrt(max(1, rows/cols)): tall matrices get larger updates (Muon reference implementations)."""
    return max(1.0, shape[0] / shape[1]) ** 0.5


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose 2-D update is orthogonalised by Newton-Schulz; `momentum` may change per step."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float, backend_steps: int,
                 nesterov: bool = True, ns_dtype: torch.dtype = torch.bfloat16) -> None:
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov, ns_dtype=ns_dtype)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """This step's orthogonalised, scaled update of p (bf16), advancing p's momentum buffer."""
        g = p.grad
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        if group["nesterov"]:
            g = g.add(buf, alpha=group["momentum"])
        else:
            g = buf
        update = zeropower_newton_schulz(g, steps=group["backend_steps"], dtype=group["ns_dtype"])
        return update * muon_scale(p.shape)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = dist.is_active()
        world_size = tdist.get_world_size() if active else 1
        rank = tdist.get_rank() if active else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=group["ns_dtype"])
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    flat[offset: offset + p.numel()] = self._update(p, group).reshape(-1)
                offset += p.numel()
            if active:
                tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset: offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()
        return loss
