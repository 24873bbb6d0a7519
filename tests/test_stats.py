"""Seed statistics and significance: Welch's one-sided test against its textbook formula, the policies'
verdicts, `pgolf seeds` orchestration (with the training run replaced by a stub) and `pgolf compare`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from helpers_runs import DATA, fake_run, tiny_config
from pgolf.cli import main
from pgolf.errors import UserError
from pgolf.stats import POLICIES, decide, spread, welch_improvement

samples = st.lists(st.floats(min_value=-10, max_value=10, allow_nan=False), min_size=2, max_size=8)


def textbook_welch(a: list[float], b: list[float], margin: float) -> tuple[float, float, float]:
    """t, df and one-sided p of H1: mean(a) - mean(b) > margin, written out from the definitions."""
    na, nb = len(a), len(b)
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    t = (statistics.fmean(a) - statistics.fmean(b) - margin) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return t, df, float(sps.t.sf(t, df))


@settings(max_examples=60, deadline=None)
@given(samples, samples, st.sampled_from([0.0, 0.005, 0.1]))
def test_welch_matches_the_textbook_formula(a: list[float], b: list[float], margin: float) -> None:
    # t is numerically meaningless for (nearly) constant samples
    assume(statistics.variance(a) > 1e-6 and statistics.variance(b) > 1e-6)
    test = welch_improvement(a, b, margin)
    t, df, p = textbook_welch(a, b, margin)
    # H1 "A - B > margin" is the same t with the sign flipped relative to scipy's (B + margin) - A
    assert test.statistic == pytest.approx(-t, rel=1e-9, abs=1e-9)
    assert test.df == pytest.approx(df, rel=1e-9)
    assert test.pvalue == pytest.approx(p, rel=1e-7, abs=1e-12)


def test_one_sided_p_values_of_the_two_directions_sum_to_one() -> None:
    a, b = [3.51, 3.53, 3.52], [3.49, 3.50, 3.515]
    assert welch_improvement(a, b).pvalue + welch_improvement(b, a).pvalue == pytest.approx(1.0)


def test_a_margin_makes_the_claim_harder() -> None:
    a, b = [3.51, 3.53, 3.52], [3.49, 3.50, 3.505]
    ps = [welch_improvement(a, b, m).pvalue for m in (0.0, 0.005, 0.01, 0.02)]
    assert ps == sorted(ps) and ps[0] < ps[-1]


def test_spread_is_the_sample_std() -> None:
    s = spread([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3) and s.std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0])) and s.n == 3
    assert spread([2.5]).std is None


def test_no_variance_means_no_verdict() -> None:
    test = welch_improvement([1.0, 1.0], [0.5, 0.5])
    assert not test.defined and test.improvement == 0.5
    v = decide(POLICIES["frontier"], [1.0, 1.0], [0.5, 0.5])
    assert not v.accepted and "undefined" in v.reason


def test_fewer_than_two_values_is_refused() -> None:
    with pytest.raises(ValueError):
        welch_improvement([1.0], [0.5, 0.6])


def test_readme_policy_needs_the_margin_frontier_does_not() -> None:
    rng = np.random.default_rng(0)
    a = list(1.100 + 0.0005 * rng.standard_normal(3))
    small = list(1.097 + 0.0005 * rng.standard_normal(3))  # 0.003 better: real but under the 0.005 margin
    large = list(1.080 + 0.0005 * rng.standard_normal(3))  # 0.02 better
    assert not decide(POLICIES["readme"], a, small).accepted
    assert decide(POLICIES["readme"], a, large).accepted
    assert decide(POLICIES["frontier"], a, small).accepted
    assert not decide(POLICIES["frontier"], a, list(np.array(a) + 0.001)).accepted  # worse is never accepted


# ---------------------------------------------------------------- pgolf compare

def make_side(root: Path, name: str, seeds: list[int], bpb: list[float], **train: Any) -> Path:
    side = root / name
    for seed, value in zip(seeds, bpb):
        cfg = tiny_config(seed, **train)
        fake_run(side / f"seed{seed}", cfg, val_bpb=value, val_loss=value * 1.5)
    return side


def test_compare_prints_both_tests_and_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_side(tmp_path, "a", [1, 2, 3], [1.300, 1.302, 1.301])
    b = make_side(tmp_path, "b", [1, 2, 3], [1.280, 1.281, 1.2795], iterations=9)
    out_json = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--policy", "readme", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "verdict (readme" in out and "B is ACCEPTED" in out and out.count("seed") >= 2
    result = json.loads(out_json.read_text())
    expected = sps.ttest_ind(np.array([1.280, 1.281, 1.2795]) * 1.5 + 0.005, np.array([1.300, 1.302, 1.301]) * 1.5,
                             equal_var=False, alternative="less").pvalue
    assert result["tests"]["val_loss_margin"]["pvalue"] == pytest.approx(expected)
    # a glob and a comma list name the same runs
    assert main(["compare", f"{a}/seed*", f"{b}/seed1,{b}/seed2,{b}/seed3", "--policy", "frontier"]) == 0
    assert "verdict (frontier" in capsys.readouterr().out


def test_compare_refuses_mixed_experiments_and_single_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_side(tmp_path, "a", [1, 2], [1.30, 1.31])
    fake_run(a / "other", tiny_config(3, iterations=99), val_bpb=1.3, val_loss=2.0)
    b = make_side(tmp_path, "b", [1, 2], [1.2, 1.21])
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not seeds of one experiment" in err[0] and "other" in err[0]
    assert main(["compare", f"{b}/seed1", str(b)]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err
    fake_run(tmp_path / "c" / "seed1", tiny_config(1), val_bpb=1.3, val_loss=2.0, data={**DATA, "val_tokens": 7})
    fake_run(tmp_path / "c" / "seed2", tiny_config(2), val_bpb=1.3, val_loss=2.0)
    assert main(["compare", str(tmp_path / "c"), str(b)]) == 2
    assert "data differs (val_tokens)" in capsys.readouterr().err


# ---------------------------------------------------------------- pgolf seeds

def test_seeds_runs_each_seed_in_order_in_one_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import pgolf.main

    ran: list[tuple[int, str]] = []

    def fake_execute(cfg: Any, command: str, code: bytes, prepare: Any = None, shutdown: bool = True) -> int:
        assert not shutdown  # the process group outlives each seed
        ran.append((cfg.train.seed, cfg.run_id))
        fake_run(Path(cfg.out_dir) / cfg.run_id, cfg, val_bpb=1.0 + cfg.train.seed / 1000, val_loss=2.0)
        return 0

    monkeypatch.setattr(pgolf.main, "execute", fake_execute)
    assert main(["seeds", "--preset", "test-tiny", "--seeds", "7,3,5", "--group", "g", "--out_dir", str(tmp_path),
                 "--train.iterations", "3"]) == 0
    assert ran == [(7, "seed7"), (3, "seed3"), (5, "seed5")]
    record = json.loads((tmp_path / "g" / "seeds.json").read_text())
    assert record["seeds"] == [7, 3, 5] and [r["run"] for r in record["runs"]] == ["seed7", "seed3", "seed5"]
    assert record["val_bpb"]["mean"] == pytest.approx(1.005)
    assert record["val_bpb"]["std"] == pytest.approx(statistics.stdev([1.007, 1.003, 1.005]))
    out = capsys.readouterr().out
    assert "mean" in out and "std" in out and "1.007000" in out
    # the group is never reused
    assert main(["seeds", "--preset", "test-tiny", "--seeds", "1", "--group", "g", "--out_dir", str(tmp_path)]) == 2


def test_seeds_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seeds", "--preset", "test-tiny", "--seeds", "1,1"]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(["seeds", "--preset", "test-tiny"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(UserError):
        from pgolf.seeds import parse_seeds

        parse_seeds("a,b")


@pytest.mark.slow
def test_seeds_under_torchrun_run_one_after_another(tmp_path: Path) -> None:
    # every rank runs the same seeds in order inside one process group (leaving and rejoining hangs)
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pgolf", "seeds",
           "--preset", "test-tiny", "--seeds", "5,6", "--group", "g", "--out_dir", str(tmp_path / "runs"),
           "--data.dataset_dir", str(tmp_path / "data/ds"), "--data.tokenizer_path", str(tmp_path / "data/t.model"),
           "--train.iterations", "2", "--train.val_loss_every", "0", "--train.warmup_steps", "0",
           "--train.dtype", "float32"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "runs/g/seeds.json").read_text())
    assert record["seeds"] == [5, 6] and all(r["steps"] == 2 for r in record["runs"])
    headers = [json.loads((tmp_path / f"runs/g/seed{s}/header.json").read_text()) for s in (5, 6)]
    assert [h["world_size"] for h in headers] == [2, 2] and headers[0]["experiment_hash"] == headers[1]["experiment_hash"]
