"""Each benchmark runs on CPU and prints one JSON object with the numbers it promises."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The benchmarks that train or time for 8-30 s each run with `make test-slow` (the default suite stays under
# 8 minutes on 2 cores); the quick ones stay in the default suite.
SLOW = pytest.mark.slow


@SLOW
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
    # the peak is the best of both sweeps (before and after the model's benches)
    sweeps = [result["matmul_sweep_flops"], result["matmul_sweep_after_flops"]]
    assert result["matmul_peak_flops"] == max(v for sw in sweeps for k, v in sw.items() if k != "peak")


@SLOW
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


@SLOW
def test_vs_reference_benchmark_trains_both_sides_on_the_same_curve(tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/vs_reference.py"), "--preset", "test-tiny",
                           "--steps", "2", "--rounds", "2", "--eager", "--dtype", "float32", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["same_init"] and len(result["pgolf_losses"]) == len(result["reference_losses"]) == 4
    # the frozen reference is the baseline model itself: same weights, batches and optimisers, same losses (in
    # float32; a machine with native bfloat16 would otherwise train both sides in autocast, equal only to its
    # rounding, which the two sides' different orders of operations reach differently)
    assert result["bf16"] is False
    assert result["loss_max_abs_diff"] < 1e-4
    assert result["speedup"] == result["pgolf_tokens_per_s"] / result["reference_tokens_per_s"] > 0


def _load_benchmark(name: str) -> Any:
    """A benchmark script as a module (its folder on the path, as when it runs as a script)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_counts_matmul_flops_and_groups_ops() -> None:
    bench = _load_benchmark("profile_step")
    assert bench.matmul_flops("aten::mm", [[64, 128], [128, 384]]) == 2.0 * 64 * 128 * 384
    assert bench.matmul_flops("aten::addmm", [[384], [64, 128], [128, 384]]) == 2.0 * 64 * 128 * 384
    assert bench.matmul_flops("aten::bmm", [[4, 16, 32], [4, 32, 8]]) == 2.0 * 4 * 16 * 32 * 8
    # inductor's extern mm passes its output too: the operands are still the first two
    assert bench.matmul_flops("aten::mm", [[64, 128], [128, 384], [64, 384]]) == 2.0 * 64 * 128 * 384
    assert bench.matmul_flops("aten::addmm", [[384], [64, 128], [128, 384], [], []]) == 2.0 * 64 * 128 * 384
    # shapes that are not a matmul's count nothing
    assert bench.matmul_flops("aten::mm", [[64]]) == bench.matmul_flops("aten::mm", [[128, 128], [4096, 128]]) == 0.0
    assert [bench.category(n) for n in ("aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                                        "Optimizer.step#Muon.step", "forward+backward", "aten::mul")] == [
        "matmul", "attention", "optimizer", "region", "other"]


@SLOW
def test_profile_step_benchmark_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/profile_step.py"), "--preset", "test-tiny",
                           "--steps", "2", "--profile-steps", "1", "--matmul-sizes", "64", "--eager",
                           "--eval-strides", "32,8", "--eval-batches", "2", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["data"] == "random tokens"  # no prepared shards under tmp_path: it made its own
    startup = result["startup"]
    assert startup["to_first_step_s"] >= startup["imports_s"] + startup["build_s"] + startup["first_step_s"]
    assert startup["compile_s"] == 0.0 and startup["to_first_step_excluding_compile_s"] == startup["to_first_step_s"]
    assert 0.0 < result["loader_share"] < 1.0 and result["step_ms"] > 0 and result["peak_memory_bytes"] > 0
    prof = result["profile"]
    assert prof["self_ms_per_step"]["matmul"] > 0 and prof["matmul_flops_per_step"] > 0
    # every forward matmul of test-tiny has 64-wide inputs or outputs; the shapes table names them
    assert prof["matmul_shapes"] and all(r["calls_per_step"] > 0 and r["ms_per_step"] >= 0 for r in prof["matmul_shapes"])
    assert any(64 in r["a"] + r["b"] for r in prof["matmul_shapes"])
    assert any(k.startswith("Optimizer.step") for k in prof["inclusive_ms_per_step"])
    assert result["matmul_share_of_peak_in_step"] == prof["matmul_flops_per_s_in_step"] / result["matmul_sweep_flops"]["peak"]
    # evaluation forwards: one row per stride, each scoring `stride` columns of every window
    ev = result["eval"]
    assert [(r["stride"], r["compiled"]) for r in ev] == [(32, False), (8, False)]
    assert all(r["self_ms_per_batch"]["matmul"] > 0 and r["scored_tokens_per_s"] > 0 for r in ev)
    assert all(r["scored_tokens_per_s"] == pytest.approx(r["rows"] * r["stride"] * 1000 / r["ms_per_batch"]) for r in ev)


def test_code_entropy_finds_context_a_memoryless_coder_misses() -> None:
    bench = _load_benchmark("code_entropy")
    rng = np.random.default_rng(0)
    # Rows of very different spreads: the row's bucket is informative, the previous code (within a row,
    # drawn independently) barely so.
    scales = np.repeat([1, 4, 16, 60], 16)[:, None]
    codes = np.clip(np.round(rng.standard_normal((64, 256)) * scales), -127, 127).astype(np.int8)
    e = bench.code_tensor_entropies(codes)
    assert e["given_row_bucket_bits"] < 0.9 * e["order0_bits"]
    assert e["order0_bits"] >= e["given_prev_bits"] > e["given_row_bucket_bits"]
    # the same matrix transposed: columns of different spreads, found by the column buckets alone
    t = bench.code_tensor_entropies(np.ascontiguousarray(codes.T))
    assert t["given_col_bucket_bits"] == pytest.approx(e["given_row_bucket_bits"])
    assert t["given_row_bucket_bits"] > 0.9 * t["order0_bits"] > t["given_col_bucket_bits"]
    # i.i.d. codes: no context helps beyond the plug-in estimate's small-sample bias
    flat = rng.integers(-8, 8, size=(64, 256)).astype(np.int8)
    f = bench.code_tensor_entropies(flat)
    assert f["given_row_bucket_bits"] > 0.97 * f["order0_bits"] and f["given_prev_bits"] > 0.95 * f["order0_bits"]
    # an adaptive coder never beats the plug-in order-0 entropy without context; with the neighbours' scale
    # it finds the rows' spreads, and on i.i.d. codes the context costs it (it learns more counts)
    for r in (e, t, f):
        assert r["adaptive_order0_bits"] >= r["order0_bits"]
    assert e["adaptive_neighbours_bits"] < 0.95 * e["adaptive_order0_bits"]
    assert t["adaptive_neighbours_bits"] < 0.95 * t["adaptive_order0_bits"]
    assert f["adaptive_neighbours_bits"] > f["adaptive_order0_bits"]


def test_code_entropy_benchmark_reads_an_artifact(tmp_path: Path) -> None:
    from helpers_runs import write_untrained_artifact
    from pgolf.presets import get_preset

    write_untrained_artifact(tmp_path, get_preset("test-tiny"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/code_entropy.py"), str(tmp_path / "final_model.int8.ptz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["tensors"] == len(result["rows"]) > 0 and result["codes"] > 0
    assert 0 < result["given_prev_ratio"] <= 1.0 and 0 < result["given_row_bucket_ratio"] <= 1.0
    assert 0 < result["given_col_bucket_ratio"] <= 1.0 and result["adaptive_order0_ratio"] >= 1.0
    assert result["adaptive_neighbours_ratio"] > 0


def test_attention_benchmark_backends_agree(tmp_path: Path) -> None:
    bench = _load_benchmark("attention")
    torch = pytest.importorskip("torch")
    q = torch.randn(2, 4, 16, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, 16, 8, dtype=torch.float64), torch.randn(2, 2, 16, 8, dtype=torch.float64)
    ref = bench.sdpa_math(q, k, v)
    assert torch.allclose(bench.explicit(q, k, v), ref, atol=1e-12) and torch.allclose(bench.sdpa(q, k, v), ref, atol=1e-12)
    # causal: the first query position sees only the first key
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 1:], v2[:, :, 1:] = 0.0, 0.0
    assert torch.allclose(bench.explicit(q, k2, v2)[:, :, 0], ref[:, :, 0])
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/attention.py"), "--preset", "test-tiny", "--repeats", "2",
                           "--out", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["fastest"] in result["ms_fwd_bwd"] and all(v > 0 for v in result["ms_fwd_bwd"].values())
    assert all(d < 1e-9 for d in result["max_abs_diff_vs_math_fp64"].values())


@SLOW
def test_eval_speed_benchmark_times_the_same_score_both_ways(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from helpers_text import TINY_VOCAB, make_documents

    torch = pytest.importorskip("torch")
    from pgolf.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
    from pgolf.data.shards import write_documents_as_shards
    from pgolf.model.gpt import GPT
    from pgolf.quant.export import export_model
    from pgolf.tokenizer import BOS_ID, encode_documents, load_tokenizer

    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    write_documents_as_shards(tmp_path / "data", "val", encode_documents(sp, make_documents(3_000, seed=2)),
                              bos_id=BOS_ID, shard_tokens=3_000)
    cfg = RunConfig(name="e", model=ModelConfig(vocab_size=TINY_VOCAB, num_layers=2, model_dim=32, num_heads=2,
                                                num_kv_heads=1),
                    train=TrainConfig(train_seq_len=32, train_batch_tokens=128, grad_accum_steps=1),
                    data=DataConfig(source="fineweb", dataset_dir=str(tmp_path / "data"), tokenizer_path=str(tiny_tokenizer)),
                    eval=EvalConfig(max_tokens=600)).validate()
    torch.manual_seed(0)
    export_model(GPT(cfg.model), cfg, tmp_path / "m.ptz", code_bytes=1_000)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/eval_speed.py"), str(tmp_path / "m.ptz"),
                           "--strides", "32,8", "--batch-tokens", "64", "--rounds", "2", "--full-last-layer",
                           "--compiled", "eager", "--flags", "--eval.dtype float32", "--out", str(tmp_path / "e.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads((tmp_path / "e.json").read_text()) and result["validation_tokens"] == 576
    rows = result["rows"]
    assert len(rows) == 2 * 3 and all(len(r["seconds"]) == 2 and r["best_s"] > 0 for r in rows)
    assert {r["variant"] for r in rows} == {"shipped", "full_last_layer", "compiled"}
    assert all((r["compile_s"][0] > 0) == (r["variant"] == "compiled") for r in rows)
    # the benchmark refuses variants that disagree, so every row of a stride carries one score
    for stride in (32, 8):
        assert len({round(r["val_bpb"], 9) for r in rows if r["stride"] == stride}) == 1
    assert result["best_sliding64_s"] is None and result["within_target"] is None  # no stride-64 row asked for
    # under torchrun the windows are split across 2 gloo processes: the same scores, rank 0 prints
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "benchmarks/eval_speed.py"), str(tmp_path / "m.ptz"), "--strides", "32,8",
                           "--batch-tokens", "128", "--rounds", "1", "--flags", "--eval.dtype float32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    assert two["world_size"] == 2 and result["world_size"] == 1 and result["bf16"] is two["bf16"] is False
    for stride in (32, 8):
        one_proc = next(r["val_bpb"] for r in rows if r["stride"] == stride)
        assert abs(next(r["val_bpb"] for r in two["rows"] if r["stride"] == stride) - one_proc) < 1e-6
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/eval_speed.py"), str(tmp_path / "m.ptz"),
                           "--ttt", "lora", "--rounds", "1", "--full-last-layer", "--flags", "--ttt.lora_chunk 8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lora = json.loads(proc.stdout)
    assert lora["ttt"] == "lora" and [r["variant"] for r in lora["rows"]] == ["shipped", "full_last_layer"]
    assert abs(lora["rows"][0]["val_bpb"] - lora["rows"][1]["val_bpb"]) < 1e-6


@SLOW
def test_lora_mix_screen_scores_each_second_pass_and_forgetting_rate_as_the_evaluation_mixes(
        tmp_path: Path, tiny_tokenizer: Path) -> None:
    from helpers_text import TINY_VOCAB, make_documents

    torch = pytest.importorskip("torch")
    from pgolf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from pgolf.data.shards import write_documents_as_shards
    from pgolf.eval.ngram import CACHE_DECAY, PASS_DECAY
    from pgolf.model.gpt import GPT
    from pgolf.quant.export import export_model
    from pgolf.tokenizer import BOS_ID, encode_documents, load_tokenizer

    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    data = tmp_path / "data"
    for split, seed in (("train", 1), ("val", 2)):
        write_documents_as_shards(data, split, encode_documents(sp, make_documents(4_000, seed=seed)),
                                  bos_id=BOS_ID, shard_tokens=100_000)
    # the model is the artifact's; the preset gives the text, its vocabulary and the evaluation's settings
    flags = (f"--data.dataset_dir {data} --data.tokenizer_path {tiny_tokenizer} --model.vocab_size {TINY_VOCAB} "
             "--train.train_seq_len 32 --eval.ngram_order 3 --eval.stride 16 --eval.dtype float32 "
             "--ttt.lora_chunk 8 --ttt.lora_rank 2 --ttt.lora_alpha 4 --ttt.lora_lr 0.05")
    cfg = RunConfig(name="s", model=ModelConfig(vocab_size=TINY_VOCAB, num_layers=2, model_dim=32, num_heads=2,
                                                num_kv_heads=1),
                    train=TrainConfig(train_seq_len=32, train_batch_tokens=128, grad_accum_steps=1),
                    data=DataConfig(source="fineweb", dataset_dir=str(data), tokenizer_path=str(tiny_tokenizer))).validate()
    torch.manual_seed(0)
    export_model(GPT(cfg.model), cfg, tmp_path / "m.ptz", code_bytes=1_000)
    shipped = f"{PASS_DECAY}:{CACHE_DECAY}"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/lora_mix_screen.py"), str(tmp_path / "m.ptz"),
                           "--preset", "test-tiny", "--flags", flags, "--tokens", "400", "--second", "4:0.05", "8:0.02",
                           "--decays", "1:1", shipped, "--out", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads((tmp_path / "s.json").read_text())
    assert result["text"] == "train-tail" and result["predictions"] == 400 and result["bytes"] > 400
    assert [(r["rank"], r["lr"]) for r in result["candidates"]] == [(4, 0.05), (8, 0.02)]
    for row in result["candidates"]:
        assert row["gain_bpb"] == pytest.approx(row["mixed_bpb"] - result["without_second_bpb"], abs=1e-12)
        plain, default = row["by_decay"]
        assert (plain["pass_decay"], plain["cache_decay"]) == (1.0, 1.0)
        assert default["mixed_bpb"] == row["mixed_bpb"]  # the shipped rates are the mixture the evaluation scores
        assert plain["mixed_bpb"] != row["mixed_bpb"] and math.isfinite(plain["mixed_bpb"])
    # a malformed pair or flag is one line and exit 2, before anything is loaded
    for bad in (["--decays", "0.99"], ["--second", "x:0.1"], ["--flags", "--eval.nope 1"]):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks/lora_mix_screen.py"), str(tmp_path / "m.ptz"),
                               "--preset", "test-tiny", *bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (bad, proc.stderr[-500:])


@SLOW
def test_eval_forward_benchmark_times_every_variant_of_one_forward(tmp_path: Path) -> None:
    # the eager torch.compile backend: the variants' plumbing without inductor's compile time
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/eval_forward.py"), "--preset", "test-tiny",
                           "--stride", "16", "--windows", "4", "--rounds", "2", "--repeats", "1", "--backend", "eager", "--dtype", "float32",
                           "--out", str(tmp_path / "f.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads((tmp_path / "f.json").read_text())
    variants = {"eager", "compiled", "math", "regional", "threads"}
    assert set(result["ms_per_forward"]) == variants and all(len(t) == 2 for t in result["ms_per_forward"].values())
    assert all(d < 1e-4 for d in result["max_abs_diff_vs_eager"].values()) and result["seq_len"] == 64
    assert result["bf16"] is False  # --dtype float32: every path computes the same numbers to rounding
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/eval_forward.py"), "--variants", "eager,fast"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "fast" in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/eval_forward.py"), "--preset", "test-tiny",
                           "--stride", "65"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--stride 65 must be in 1..64" in proc.stderr


def _bundle_size_module():
    """benchmarks/bundle_size.py imported as a module (it imports the benchmarks' own helpers)."""
    spec = importlib.util.spec_from_file_location("bundle_size", REPO / "benchmarks/bundle_size.py")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return mod


def test_bundle_size_removes_the_functions_a_run_never_entered() -> None:
    import ast

    from pgolf import bundle

    mod = _bundle_size_module()
    name = "pgolf.fileio"
    tree = ast.parse(bundle.module_path(name).read_text(encoding="utf-8"))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(funcs) >= 2
    ran = {funcs[1].body[-1].lineno}  # one line inside the second function only
    shaken = mod.unentered_removed({name: bundle.stripped_source(name)}, {name: ran})[name]
    kept = [n.name for n in ast.parse(shaken).body if isinstance(n, ast.FunctionDef)]
    assert kept == [funcs[1].name]
    everything = mod.unentered_removed({name: ""}, {name: {n.lineno for n in ast.walk(tree) if hasattr(n, "lineno")}})
    assert everything[name] == bundle.minified(bundle.stripped_source(name))  # all entered: as the bundle ships it


def test_bundle_size_benchmark_prints_json(tmp_path: Path) -> None:
    from pgolf import bundle
    from pgolf.presets import get_preset

    out = tmp_path / "size.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/bundle_size.py"), "--preset", "test-tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    cfg = get_preset("test-tiny")
    assert result["bundle_bytes"] == bundle.code_bytes(cfg)
    assert sorted(r["module"] for r in result["modules"]) == bundle.bundle_modules(cfg)
    assert result["source_bytes"] == sum(r["source_bytes"] for r in result["modules"])
    assert 0 < result["payload_compressed_bytes"] < result["bundle_bytes"]
    # the bundle's encodings each take something off: the renaming of locals, NUL-joining instead of JSON
    assert result["payload_unminified_compressed_bytes"] > result["payload_compressed_bytes"]
    assert result["payload_json_compressed_bytes"] > result["payload_compressed_bytes"]
    dead = result["unreferenced_defs"]  # what the bundle's shaking left out, and the payload had it not
    assert dead["count"] > 0 and dead["payload_with_them_compressed_bytes"] > result["payload_compressed_bytes"]


def test_ngram_cache_benchmark_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "ngram.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/ngram_cache.py"), "--tokens", "3000,9000",
                           "--order", "4", "--vocab", "64", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text()) and [r["tokens"] for r in result["rows"]] == [3000, 9000]
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["peak_rss_bytes"] > 0
        # the synthetic stream reuses pieces: the cache must lower random losses well below their mean
        assert row["mean_mixed_nll"] < row["mean_model_nll"] - 0.2
