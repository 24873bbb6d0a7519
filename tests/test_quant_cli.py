"""`pgolf quantize RUN_DIR` end to end on a test-tiny run: the per-tensor table with order-0 entropies, a
fitted artifact under the budget, reloaded from disk and scored by the scorer; bad inputs are one line."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from helpers_text import TINY_VOCAB, make_documents

from pgolf import cli
from pgolf.artifact import read_artifact
from pgolf.data.shards import write_documents_as_shards
from pgolf.tokenizer import BOS_ID, encode_documents, load_tokenizer


@pytest.fixture(scope="module")
def run_dir(tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test-tiny run trained through `pgolf train` on shards of generated text (vocab 384)."""
    root = tmp_path_factory.mktemp("quantize")
    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    for split, seed, size in (("train", 1, 120_000), ("val", 2, 20_000)):
        docs = encode_documents(sp, make_documents(size, seed=seed))
        write_documents_as_shards(root / "data", split, docs, bos_id=BOS_ID, shard_tokens=1 << 20)
    code = cli.main(["train", "--preset", "test-tiny", "--out_dir", str(root / "runs"), "--data.source", "fineweb",
                     "--model.vocab_size", str(TINY_VOCAB), "--data.dataset_dir", str(root / "data"),
                     "--data.tokenizer_path", str(tiny_tokenizer), "--train.iterations", "4", "--run_id", "test-tiny",
                     "--eval.max_tokens", "4096"])
    assert code == 0
    return root / "runs" / "test-tiny"


def test_quantize_fits_prints_the_table_and_scores(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = read_artifact(run_dir / "final_model.int8.ptz")
    sensitivity = {n: float(i + 1) for i, n in enumerate(raw.state)}  # what a trainer would save
    (run_dir / "sensitivity.json").write_text(json.dumps(sensitivity))
    budget = raw.info.total_bytes - 8_000  # well under the baseline int8 export
    out = run_dir / "fitted.ptz"
    capsys.readouterr()
    code = cli.main(["quantize", str(run_dir), "--budget", str(budget), "--out", str(out),
                     "--quant.scheme", "intx", "--quant.keep_float_max_numel", "0", "--quant.gptq", "true",
                     "--quant.gptq_batches", "4", "--quant.allocate_bits", "true", "--quant.min_bits", "4",
                     "--quant.prune", "true", "--quant.compressor", "best", "--quant.margin_bytes", "500"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    loaded = read_artifact(out)
    assert loaded.info.total_bytes <= budget - 500
    for name in loaded.state:
        assert name[:34] in printed
    assert "order-0 entropy" in printed and "slack" in printed and "calibration train" in printed
    assert "val_bpb" in printed
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["export"]["total_bytes"] == loaded.info.total_bytes
    assert math.isfinite(report["score"]["val_bpb"]) and report["score"]["total_bytes"] == loaded.info.total_bytes
    rows = {r["name"]: r for r in report["tensors"]}
    assert all(rows[n]["sensitivity"] == v for n, v in sensitivity.items())
    assert all(r["entropy_bytes"] >= 0 for r in rows.values())
    assert loaded.plans["blocks.0.attn.c_q.weight"].gptq  # GPTQ from the run's training shards
    assert {p.bits for p in loaded.plans.values() if p.role == "matrix"} <= set(range(4, 9))


def test_quantize_errors_are_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["quantize", str(tmp_path)], "header.json"),
        (["quantize", str(run_dir), "--budget", "3000", "--quant.scheme", "intx", "--quant.prune", "true",
          "--out", str(tmp_path / "x.ptz")], "budget"),
        (["quantize", str(run_dir), "--quant.matrix_bits", "12"], "quant.matrix_bits"),
        (["quantize"], "run folder"),
    ]
    for args, match in cases:
        capsys.readouterr()
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "x.ptz").exists()


def test_export_time_benchmark_times_each_stage(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    spec = importlib.util.spec_from_file_location("bench_export_time", benchmarks / "export_time.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    raw = read_artifact(run_dir / "final_model.int8.ptz")
    flags = ["--quant.scheme", "intx", "--quant.gptq", "true", "--quant.gptq_batches", "4", "--quant.allocate_bits",
             "true", "--quant.min_bits", "4", "--quant.compressor", "best", "--quant.keep_float_max_numel", "0"]
    budget = raw.info.total_bytes - 6_000
    result = bench.time_export(run_dir, flags, budget)
    stages = ("load_s", "calibration_s", "fit_s", "report_s")
    assert all(result[s] > 0 for s in stages) and result["total_s"] == pytest.approx(sum(result[s] for s in stages))
    assert result["total_bytes"] <= budget and result["budget_bytes"] == budget
    assert min(result["bits"].values()) >= 4 and result["within_target"] == (result["total_s"] <= 30.0)
    json.dumps(result)  # printable as it is
