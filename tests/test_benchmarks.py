"""The throughput benchmark runs on CPU and prints one JSON object with the numbers it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/throughput.py"), "--preset", "test-tiny",
                           "--steps", "2", "--matmul-sizes", "64,256", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    for key in ("train_tokens_per_s", "eval_tokens_per_s", "peak_memory_bytes", "matmul_peak_flops", "mfu"):
        assert result[key] > 0, key
    # The achieved FLOP rate is derived from the measured token rate and the model's FLOPs per token.
    assert result["achieved_flops"] == result["train_tokens_per_s"] * result["flops_per_token"]
    # MFU is the achieved rate over the best rate of the sweep measured in the same run (no bound on its
    # value here: two timings on a busy machine may disagree; the benchmark reports, it does not judge).
    assert result["mfu"] == result["achieved_flops"] / result["matmul_peak_flops"]
    assert result["matmul_peak_flops"] == max(v for k, v in result["matmul_sweep_flops"].items() if k != "peak")


def test_ablation_benchmark_runs_cumulative_groups(tmp_path: Path) -> None:
    out = tmp_path / "ablation.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/ablation.py"), "--preset", "test-tiny", "--seeds", "7",
                           "--seconds", "30", "--base-flags", "--train.iterations 2 --train.warmup_steps 0 "
                           "--train.val_loss_every 0", "--group", "wide=--model.mlp_mult 3",
                           "--out", str(tmp_path / "runs"), "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    base, wide = result["rows"]
    assert (base["group"], wide["group"]) == ("base", "wide") and base["seeds"] == wide["seeds"] == [7]
    assert "--model.mlp_mult" not in base["flags"] and wide["flags"][-2:] == ["--model.mlp_mult", "3"]
    assert base["steps"]["mean"] == wide["steps"]["mean"] == 2 and base["val_bpb"]["mean"] > 0


def test_calibration_benchmark_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/calibration.py"), "--preset", "test-tiny",
                           "--batches", "2", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    for key in ("forward_s", "collect_s", "collect_with_qat_s", "collect_tokens_per_s", "qat_slowdown"):
        assert result[key] > 0, key
    from pgolf.presets import get_preset

    cfg = get_preset("test-tiny")
    seq_len = cfg.quant.gptq_seq_len or cfg.train.train_seq_len
    assert result["tokens"] == 2 * 8 * seq_len and result["collect_tokens_per_s"] == result["tokens"] / result["collect_s"]


def test_vs_reference_benchmark_trains_both_sides_on_the_same_curve(tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/vs_reference.py"), "--preset", "test-tiny",
                           "--steps", "2", "--rounds", "2", "--eager", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["same_init"] and len(result["pgolf_losses"]) == len(result["reference_losses"]) == 4
    # the frozen reference is the baseline model itself: same weights, batches and optimisers, same losses
    assert result["loss_max_abs_diff"] < 1e-4
    assert result["speedup"] == result["pgolf_tokens_per_s"] / result["reference_tokens_per_s"] > 0
