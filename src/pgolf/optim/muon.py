"""Muon: Newton-Schulz orthogonalised Nesterov momentum for 2-D weights (Keller Jordan, 2024).

As in the challenge baseline (openai/parameter-golf `train_gpt.py`, from modded-nanogpt): the quintic
iteration runs in bf16 (float32 where bf16 is not native) and maps every singular value into roughly
[0.5, 1.5] rather than exactly 1; updates are scaled by sqrt(max(1, rows/cols)). Weight decay is
decoupled and applied outside (`pgolf.optim.groups.decay_weights_`).

Record variants, each off by default:
- Polar Express coefficients (Amsel et al. 2025, arXiv:2505.16932; parameter-golf PR #1344): a
  different (a, b, c) per iteration, after normalising by 1.02x the Frobenius norm (a safety margin).
- MuonEq-R (arXiv:2603.28254; PR #1217/#1260): each row of the Nesterov momentum is divided by its L2
  norm before the iteration, equalising the rows' contribution.
- Two ways to share the work across ranks. The baseline's: matrix i belongs to rank i % world_size and
  the updates are summed into every rank through one all-reduce of a flat buffer. The sharded one
  (Parallel Muon, PR #399): matrices are grouped by shape, each rank orthogonalises a contiguous share
  of every group (optionally as one batched bmm iteration) and the shares are all-gathered
  asynchronously, the next group's work overlapping the previous group's communication.
Every rank advances every momentum buffer (cheap element-wise work), so optimiser state is the same on
all ranks and a checkpoint written by rank 0 resumes at any world size. On one process both ways run
the same code without communication.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as tdist

from pgolf import dist

# Quintic coefficients chosen to maximise the slope at 0 (modded-nanogpt).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express, 5 iterations, as published with a 2% safety factor (modded-nanogpt / PR #1344).
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02


def ns_schedule(coeffs: str, steps: int) -> tuple[list[tuple[float, float, float]], float]:
    """(per-iteration (a, b, c), norm safety factor) of a named coefficient set."""
    if coeffs == "classic":
        return [NS_COEFFICIENTS] * steps, 1.0
    if coeffs == "polar_express":
        if not 1 <= steps <= len(POLAR_EXPRESS_COEFFICIENTS):
            raise ValueError(f"Polar Express has {len(POLAR_EXPRESS_COEFFICIENTS)} iterations, not {steps}")
        return list(POLAR_EXPRESS_COEFFICIENTS[:steps]), POLAR_EXPRESS_SAFETY
    raise ValueError(f"unknown Newton-Schulz coefficient set {coeffs!r}")


def zeropower_newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                            dtype: torch.dtype = torch.bfloat16, coeffs: str = "classic") -> torch.Tensor:
    """Approximate U V^T of a 2-D matrix G = U S V^T, in `dtype`, with `steps` quintic iterations."""
    assert G.ndim == 2, f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}"
    schedule, safety = ns_schedule(coeffs, steps)
    X = G.to(dtype)  # (R, C)
    # Frobenius norm 1 bounds the spectral norm by 1
    X = X / (X.norm() + eps) if safety == 1.0 else X / (X.norm() * safety + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T  # (C, R): iterate on the short side so A is the smaller Gram matrix
    for a, b, c in schedule:
        A = X @ X.T  # (r, r)
        B = b * A + c * A @ A  # (r, r)
        X = a * X + B @ X
    return X.T if transposed else X


def zeropower_newton_schulz_batched(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                                    dtype: torch.dtype = torch.bfloat16, coeffs: str = "classic") -> torch.Tensor:
    """`zeropower_newton_schulz` of K same-shape matrices at once (bmm form), G of shape (K, R, C)."""
    assert G.ndim == 3, f"batched Newton-Schulz needs (K, R, C), got shape {tuple(G.shape)}"
    schedule, safety = ns_schedule(coeffs, steps)
    X = G.to(dtype)  # (K, R, C)
    norms = X.norm(dim=(-2, -1), keepdim=True)  # (K, 1, 1)
    X = X / (norms + eps) if safety == 1.0 else X / (norms * safety + eps)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT  # (K, C, R)
    for a, b, c in schedule:
        A = X @ X.mT  # (K, r, r)
        B = b * A + c * A @ A  # (K, r, r)
        X = a * X + B @ X
    return X.mT if transposed else X


def muon_scale(shape: torch.Size) -> float:
    """sqrt(max(1, rows/cols)): tall matrices get larger updates (Muon reference implementations)."""
    return max(1.0, shape[0] / shape[1]) ** 0.5


def normalize_rows(g: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row divided by its L2 norm (MuonEq-R), rows of zeros left at zero."""
    return g / g.norm(dim=-1, keepdim=True).clamp_min(eps)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose 2-D update is orthogonalised by Newton-Schulz; `momentum` may change per step."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float, backend_steps: int,
                 nesterov: bool = True, ns_dtype: torch.dtype = torch.bfloat16, ns_coeffs: str = "classic",
                 row_normalize: bool = False, sharded: bool = False, batched: bool = False) -> None:
        ns_schedule(ns_coeffs, backend_steps)  # fail early on a bad combination
        if batched and not sharded:
            raise ValueError("batched Newton-Schulz runs in the sharded engine (sharded=True)")
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov, ns_dtype=ns_dtype,
                        ns_coeffs=ns_coeffs, row_normalize=row_normalize, sharded=sharded, batched=batched)
        super().__init__(params, defaults)

    def _advance_momentum(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        return buf

    def _direction(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Advance p's momentum buffer; return the (Nesterov, optionally row-normalised) direction."""
        buf = self._advance_momentum(p, group)
        g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        return normalize_rows(g) if group["row_normalize"] else g

    def _orthogonalise(self, g: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        return zeropower_newton_schulz(g, steps=group["backend_steps"], dtype=group["ns_dtype"],
                                       coeffs=group["ns_coeffs"])

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """This step's orthogonalised, scaled update of p (in ns_dtype), advancing p's momentum buffer."""
        return self._orthogonalise(self._direction(p, group), group) * muon_scale(p.shape)

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
            if not group["params"]:
                continue
            if group["sharded"]:
                self._step_sharded(group, world_size, rank)
            else:
                self._step_round_robin(group, world_size, rank, active)
        return loss

    def _step_round_robin(self, group: dict[str, Any], world_size: int, rank: int, active: bool) -> None:
        """The baseline: matrix i is orthogonalised by rank i % world_size; one flat all-reduce sums them."""
        params = group["params"]
        flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=group["ns_dtype"])
        offset = 0
        for i, p in enumerate(params):
            if p.grad is not None:
                if i % world_size == rank:
                    flat[offset: offset + p.numel()] = self._update(p, group).reshape(-1)
                else:
                    self._advance_momentum(p, group)
            offset += p.numel()
        if active:
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        offset = 0
        for p in params:
            p.add_(flat[offset: offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
            offset += p.numel()

    def _step_sharded(self, group: dict[str, Any], world_size: int, rank: int) -> None:
        """Same-shape matrices split into contiguous per-rank shares; shares all-gathered asynchronously."""
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is not None:
                by_shape.setdefault(tuple(p.shape), []).append(p)
        # Largest groups first: their communication has the most following work to hide behind.
        buckets = sorted(by_shape.items(), key=lambda kv: -math.prod(kv[0]) * len(kv[1]))
        pending = []
        for shape, params in buckets:
            share = math.ceil(len(params) / world_size)
            mine = range(rank * share, min((rank + 1) * share, len(params)))
            local = torch.zeros((share, *shape), device=params[0].device, dtype=group["ns_dtype"])  # (S, R, C)
            for j, p in enumerate(params):
                if j not in mine:
                    self._advance_momentum(p, group)
            directions = [self._direction(params[j], group) for j in mine]
            if directions and group["batched"]:
                stacked = torch.stack(directions)  # (n, R, C)
                local[: len(directions)] = zeropower_newton_schulz_batched(
                    stacked, steps=group["backend_steps"], dtype=group["ns_dtype"], coeffs=group["ns_coeffs"])
            else:
                for k, g in enumerate(directions):
                    local[k] = self._orthogonalise(g, group)
            local.mul_(muon_scale(torch.Size(shape)))
            gathered, handle = dist.all_gather_async(local)  # (world * S, R, C)
            pending.append((params, gathered, handle))
        for params, gathered, handle in pending:
            if handle is not None:
                handle.wait()
            for j, p in enumerate(params):
                p.add_(gathered[j].to(p.dtype), alpha=-group["lr"])
