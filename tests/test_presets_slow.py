"""The README's main job, for real: `pgolf run --preset cpu-demo` from nothing (corpus preparation
included) finishes inside 10 minutes on 2 cores, fits the CPU track's byte budget, and its
roundtripped model beats xz on the same validation text. Slow (minutes): run with `make test-slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_cpu_demo_meets_its_promises(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pgolf", "run", "--preset", "cpu-demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "runs/cpu-demo/summary.json").read_text())
    assert wall < 600, f"cpu-demo took {wall:.0f} s including prepare"
    assert s["within_byte_budget"] and s["total_bytes"] <= 1_000_000
    assert s["within_eval_budget"]
    assert s["val_bpb"] < s["reference_bpb"]["xz"], s
    assert abs(s["quant_gap_bpb"]) < 0.05
    assert 250_000 <= s["val_tokens_scored"] <= 400_000
