"""Muon's record variants: Polar Express and classic coefficients both land singular values in a band
around 1, MuonEq-R normalises rows before the iteration, batched Newton-Schulz equals the per-matrix
one, and the sharded engine on one process equals the baseline's round robin."""

from __future__ import annotations

import pytest
import torch

from helpers_train import one_thread  # noqa: F401  (autouse: single-threaded torch)
from pgolf.optim.muon import (Muon, muon_scale, normalize_rows, zeropower_newton_schulz,
                              zeropower_newton_schulz_batched)

# (lower, upper) bounds on the singular values of 5 iterations on a full-rank rectangular matrix.
BANDS = {"classic": (0.5, 1.5), "polar_express": (0.8, 1.2)}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("coeffs", ["classic", "polar_express"])
@pytest.mark.parametrize("shape", [(128, 32), (32, 96)])
def test_singular_values_in_band(coeffs: str, shape: tuple[int, int]) -> None:
    G = randn(*shape)
    s = torch.linalg.svdvals(zeropower_newton_schulz(G, steps=5, coeffs=coeffs).float())
    lo, hi = BANDS[coeffs]
    assert lo < s.min() and s.max() < hi
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    X = zeropower_newton_schulz(G, steps=5, dtype=torch.float32, coeffs=coeffs)
    assert (X * (U @ Vh)).sum() / (X.norm() * (U @ Vh).norm()) > 0.97  # close to the polar factor


def test_polar_express_is_tighter_than_classic() -> None:
    G = randn(96, 40)
    spread = {c: torch.linalg.svdvals(zeropower_newton_schulz(G, dtype=torch.float32, coeffs=c))
              for c in ("classic", "polar_express")}
    assert (spread["polar_express"] - 1).abs().max() < (spread["classic"] - 1).abs().max()
    with pytest.raises(ValueError):
        zeropower_newton_schulz(G, steps=6, coeffs="polar_express")


@pytest.mark.parametrize("coeffs", ["classic", "polar_express"])
def test_batched_equals_per_matrix(coeffs: str) -> None:
    for shape in ((48, 16), (16, 48), (24, 24)):
        G = torch.stack([randn(*shape, seed=i) * (i + 1) for i in range(3)])
        batched = zeropower_newton_schulz_batched(G, steps=5, dtype=torch.float32, coeffs=coeffs)
        single = torch.stack([zeropower_newton_schulz(g, steps=5, dtype=torch.float32, coeffs=coeffs) for g in G])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_row_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    g = randn(6, 10)
    g[2] = 0
    n = normalize_rows(g).norm(dim=1)
    assert torch.allclose(n[[0, 1, 3, 4, 5]], torch.ones(5)) and n[2] == 0


def one_update(grad: torch.Tensor, **kw: object) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    p.grad = grad.clone()
    Muon([p], lr=1.0, momentum=0.0, backend_steps=5, ns_dtype=torch.float32, **kw).step()  # type: ignore[arg-type]
    return -p.detach()


def test_muoneq_r_normalises_rows_before_newton_schulz() -> None:
    g = randn(32, 16)
    update = one_update(g, row_normalize=True)
    expected = zeropower_newton_schulz(normalize_rows(g), dtype=torch.float32) * muon_scale(g.shape)
    torch.testing.assert_close(update, expected)
    # Invariant: with rows normalised first, rescaling rows of the gradient does not change the update,
    # while plain Muon's update does change.
    row_scales = torch.linspace(0.1, 10.0, 32)[:, None]
    torch.testing.assert_close(one_update(g * row_scales, row_normalize=True), update, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(one_update(g * row_scales), one_update(g), atol=1e-3)


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    shapes = [(32, 16), (16, 32), (32, 16), (24, 24), (32, 16), (16, 32)]
    return [torch.nn.Parameter(randn(*s, seed=seed + i)) for i, s in enumerate(shapes)]


def run_muon(steps: int, **kw: object) -> list[torch.Tensor]:
    params = make_params()
    opt = Muon(params, lr=0.05, momentum=0.9, backend_steps=5, ns_dtype=torch.float32, **kw)  # type: ignore[arg-type]
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = randn(*p.shape, seed=100 * step + i)
        opt.step()
    return [p.detach().clone() for p in params]


def test_sharded_engine_on_one_process_equals_round_robin() -> None:
    baseline = run_muon(3)
    assert all(torch.equal(a, b) for a, b in zip(baseline, run_muon(3, sharded=True)))
    polar = run_muon(3, ns_coeffs="polar_express", row_normalize=True)
    assert all(torch.equal(a, b) for a, b in zip(polar, run_muon(3, sharded=True, ns_coeffs="polar_express",
                                                                  row_normalize=True)))
    batched = run_muon(3, sharded=True, batched=True)
    for a, b in zip(baseline, batched):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        Muon(make_params(), lr=0.1, momentum=0.9, backend_steps=5, batched=True)
