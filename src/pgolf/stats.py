"""Multi-seed statistics and significance: is experiment B better than experiment A?

Two acceptance rules of the challenge (openai/parameter-golf; reference §1.5):
- `readme`: the README's rule for a new record, "beat the existing SOTA by at least 0.005 nats" shown
  at p < 0.01. Tested here as a one-sided Welch t-test on val_loss (nats) of H1: mean(A) - mean(B) >
  0.005, i.e. B's losses shifted up by the margin are still lower than A's.
- `frontier`: the leaderboard's later practice (PR #1902, described in PR #1967 as "one-sided Welch's
  t-test, p < 0.25 vs the previous frontier row"): H1: mean(B) < mean(A) on val_bpb, no margin.

Welch's test (unequal variances) is scipy's `ttest_ind(equal_var=False)`. Standard deviations are
sample standard deviations (ddof=1), as records report `val_bpb_std`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one metric over seeds (std is None for a single seed)."""

    mean: float
    std: float | None
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample std (ddof=1) of `values`."""
    if not values:
        raise ValueError("spread of no values")
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return Spread(mean=float(arr.mean()), std=std, n=int(arr.size))


@dataclass(frozen=True)
class OneSidedTest:
    """Welch's one-sided test of H1: mean(a) - mean(b) > margin (B better than A, lower is better)."""

    statistic: float
    df: float
    pvalue: float
    mean_a: float
    mean_b: float
    margin: float
    n_a: int
    n_b: int

    @property
    def improvement(self) -> float:
        """How much lower B's mean is than A's."""
        return self.mean_a - self.mean_b

    @property
    def defined(self) -> bool:
        return math.isfinite(self.pvalue)


def welch_df(a: np.ndarray, b: np.ndarray) -> float:
    """Welch-Satterthwaite degrees of freedom of two samples."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    return float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)))


def welch_improvement(a: Sequence[float], b: Sequence[float], margin: float = 0.0) -> OneSidedTest:
    """One-sided Welch t-test that B's mean is lower than A's by more than `margin`.

    Each side needs at least two values. When neither side varies the test is undefined (t = d/0) and
    statistic, df and pvalue are NaN: identical reruns prove nothing about seed noise."""
    from scipy import stats as sps

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        raise ValueError(f"Welch's test needs at least 2 values per side, got {xa.size} and {xb.size}")
    common = dict(mean_a=float(xa.mean()), mean_b=float(xb.mean()), margin=float(margin), n_a=int(xa.size),
                  n_b=int(xb.size))
    if xa.var(ddof=1) == 0 and xb.var(ddof=1) == 0:
        nan = float("nan")
        return OneSidedTest(statistic=nan, df=nan, pvalue=nan, **common)
    # H1: mean(b + margin) < mean(a); ttest_ind(x, y, alternative="less") tests mean(x) < mean(y).
    res = sps.ttest_ind(xb + margin, xa, equal_var=False, alternative="less")
    return OneSidedTest(statistic=float(res.statistic), df=welch_df(xa, xb), pvalue=float(res.pvalue), **common)


@dataclass(frozen=True)
class Policy:
    """An acceptance rule: the metric it tests, the margin B must beat A by, and the p-value bound."""

    name: str
    metric: str
    margin: float
    alpha: float
    rule: str


POLICIES: dict[str, Policy] = {
    "readme": Policy(name="readme", metric="val_loss", margin=0.005, alpha=0.01,
                     rule="at least 0.005 nats better in val_loss at p < 0.01 (one-sided Welch)"),
    "frontier": Policy(name="frontier", metric="val_bpb", margin=0.0, alpha=0.25,
                       rule="lower val_bpb at p < 0.25 against the previous frontier (one-sided Welch)"),
}


@dataclass(frozen=True)
class Verdict:
    """Whether B is accepted over A under a policy, with the test it rests on."""

    policy: Policy
    accepted: bool
    test: OneSidedTest
    reason: str


def decide(policy: Policy, a: Sequence[float], b: Sequence[float]) -> Verdict:
    """Apply `policy` to the values of its metric for A and B (lower is better)."""
    test = welch_improvement(a, b, policy.margin)
    unit = "nats" if policy.metric == "val_loss" else "bpb"
    if not test.defined:
        return Verdict(policy, False, test, f"no seed variance on either side: the test is undefined "
                                             f"(improvement {test.improvement:+.6f} {unit})")
    accepted = test.pvalue < policy.alpha
    relation = "<" if accepted else ">="
    return Verdict(policy, accepted, test, f"{policy.metric} improvement {test.improvement:+.6f} {unit} "
                                           f"(margin {policy.margin:g}), p = {test.pvalue:.4g} {relation} "
                                           f"{policy.alpha:g}")
