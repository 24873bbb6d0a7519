"""End to end through the real command line: prepare -> train -> artifact -> roundtrip eval, on a
slice of the embedded corpus, plus the one-line errors a user gets for common mistakes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pgolf(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pgolf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def tiny_flags(root: Path) -> list[str]:
    return ["--out_dir", str(root / "runs"),
            "--data.dataset_dir", str(root / "data/datasets/embedded_sp512"),
            "--data.tokenizer_path", str(root / "data/tokenizers/embedded_512_bpe.model")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("e2e")
    proc = pgolf("run", "--preset", "test-tiny", "--run_id", "test-tiny", *tiny_flags(root), cwd=root)
    return root, proc


def test_run_produces_roundtrip_score_and_files(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = root / "runs" / "test-tiny"
    for name in ("header.json", "metrics.jsonl", "log.txt", "summary.json", "final_model.int8.ptz",
                 "final_model.safetensors"):
        assert (run_dir / name).exists(), name
    s = json.loads((run_dir / "summary.json").read_text())
    # A model that learned anything beats the uniform distribution over the vocabulary.
    uniform_bpb = math.log2(512) * s["val_tokens_scored"] / s["val_bytes_scored"]
    assert 0.5 < s["val_bpb"] < uniform_bpb
    assert s["total_bytes"] == s["code_bytes"] + s["model_bytes"]
    assert s["model_bytes"] == (run_dir / "final_model.int8.ptz").stat().st_size
    assert s["steps"] == 8 and s["stopped_by"] == "iterations"
    assert "val_bpb" in proc.stdout and "bytes" in proc.stdout
    header = json.loads((run_dir / "header.json").read_text())
    for key in ("config_hash", "versions", "hardware", "git_commit", "seed", "data", "config"):
        assert key in header
    assert header["data"]["val_tokens"] > 0 and len(header["data"]["tokenizer_sha256"]) == 16
    # the log carries the challenge's own lines, which reviewers grep, and starts with the counted code
    log = (run_dir / "log.txt").read_text()
    import hashlib
    import re

    code = (run_dir / "train_gpt.py").read_bytes()
    assert log.splitlines()[0] == f"code_sha256 {hashlib.sha256(code).hexdigest()} bytes {len(code)}"
    assert len(code) == s["code_bytes"]
    assert re.search(r"^step:1/8 train_loss:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d\dms$", log, re.M)
    assert re.search(r"^step:4/8 val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} ", log, re.M)
    assert f"Total submission size int8+zlib: {s['total_bytes']} bytes" in log
    assert f"final_int8_zlib_roundtrip_exact val_loss:{s['val_loss']:.8f} val_bpb:{s['val_bpb']:.8f}" in log
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("step") == 8 and "eval" in events and events[-1] == "summary"


def test_eval_verb_reproduces_the_run_score(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = root / "runs" / "test-tiny"
    s = json.loads((run_dir / "summary.json").read_text())
    ev = pgolf("eval", str(run_dir / "final_model.int8.ptz"), cwd=root)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"val_bpb {s['val_bpb']:.6f}" in ev.stdout


SCORE_WITH_COUNTED_CODE_ONLY = """
import importlib.abc, json, sys
allowed = set(json.loads(sys.argv[2]))

class OnlyCounted(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pgolf" or not name.startswith("pgolf."):
            return None
        rel = name[len("pgolf."):].replace(".", "/")
        if rel + ".py" in allowed or rel + "/__init__.py" in allowed:
            return None
        raise ImportError("scoring imported uncounted module " + name)

sys.meta_path.insert(0, OnlyCounted())
from pgolf.artifact import read_artifact
from pgolf.config import run_config_from_dict
from pgolf.dist import init
from pgolf.scoring import eval_artifact
cfg = run_config_from_dict(read_artifact(sys.argv[1]).run_config)
print(json.dumps(eval_artifact(sys.argv[1], cfg, init())))
"""


def test_scoring_needs_only_the_loading_side(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    # The loading side claims to be all the code needed to load and score an artifact: score it with
    # every other pgolf module (trainer, quantisers, GPTQ, fitting) unimportable and get the run's number back.
    from pgolf.artifact import SCORING_MODULES

    root, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = root / "runs/test-tiny/final_model.int8.ptz"
    out = subprocess.run([sys.executable, "-c", SCORE_WITH_COUNTED_CODE_ONLY, str(art), json.dumps(SCORING_MODULES)],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads(out.stdout.strip().splitlines()[-1])
    s = json.loads((root / "runs/test-tiny/summary.json").read_text())
    assert scored["val_bpb"] == s["val_bpb"] and scored["total_bytes"] == s["total_bytes"]


def test_prepare_is_reused(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = tiny_run
    again = pgolf("prepare", "--preset", "test-tiny", *tiny_flags(root)[2:], cwd=root)
    assert again.returncode == 0, again.stderr
    assert "reusing" in again.stdout


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_unknown_preset_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(pgolf("run", "--preset", "nope", cwd=tmp_path))
    assert "nope" in line and "cpu-demo" in line


def test_bad_flag_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(pgolf("train", "--preset", "test-tiny", "--model.num_layerz", "3", cwd=tmp_path))
    assert "num_layerz" in line


FLAG_MISTAKES = [["run", "--preset", "nope"], ["train", "--preset", "test-tiny", "--model.num_layerz", "3"],
                 ["bundle", "--preset", "test-tiny", "--model.num_layers", "x"],
                 ["inspect", "--preset", "test-tiny", "--train.seed", "-"], ["quantize", "no_such_run"]]


def test_flag_mistakes_are_answered_before_torch_loads(tmp_path: Path) -> None:
    # importing torch costs seconds; a mistyped flag, preset or folder is answered without it
    probe = ("import sys\nfrom pgolf.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    rc = e.code\nprint(rc, 'torch' in sys.modules)")
    for argv in FLAG_MISTAKES:
        proc = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.split() == ["2", "False"], (argv, proc.stdout, proc.stderr[-2000:])
        assert len(proc.stderr.strip().splitlines()) == 1, (argv, proc.stderr)


def test_invalid_value_names_the_flag(tmp_path: Path) -> None:
    line = one_line_error(pgolf("train", "--preset", "test-tiny", "--model.num_kv_heads", "3", cwd=tmp_path))
    assert "model.num_kv_heads" in line


def test_missing_fineweb_data_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(pgolf("run", "--preset", "baseline-8xh100", cwd=tmp_path))
    assert "pgolf data fineweb" in line


def test_corrupt_artifact_is_one_line(tmp_path: Path, tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = tiny_run
    bad = tmp_path / "bad.ptz"
    data = bytearray((root / "runs/test-tiny/final_model.int8.ptz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    line = one_line_error(pgolf("eval", str(bad), "--preset", "test-tiny", *tiny_flags(root)[2:], cwd=root))
    assert str(bad) in line


def test_over_budget_artifact_is_one_line(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = tiny_run
    art = root / "runs/test-tiny/final_model.int8.ptz"
    line = one_line_error(pgolf("eval", str(art), "--budget.artifact_max_bytes", "1000", cwd=root))
    assert "budget" in line and str(art) in line


def test_tokenizer_vocab_mismatch_is_one_line(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = tiny_run
    line = one_line_error(pgolf("train", "--preset", "test-tiny", *tiny_flags(root), "--model.vocab_size", "1024",
                                "--data.source", "fineweb", cwd=root))
    assert "vocab" in line


def test_corrupt_shard_is_one_line(tmp_path: Path, tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = tiny_run
    data = tmp_path / "data"
    data.mkdir()
    for shard in (root / "data/datasets/embedded_sp512").glob("fineweb_*.bin"):
        raw = bytearray(shard.read_bytes())
        if "_val_" in shard.name:
            raw = raw[:-7]  # truncated: the size no longer matches the header's token count
        (data / shard.name).write_bytes(bytes(raw))
    art = root / "runs/test-tiny/final_model.int8.ptz"
    line = one_line_error(pgolf("eval", str(art), "--data.dataset_dir", str(data), cwd=root))
    assert "fineweb_val_000000.bin" in line


def test_help_lists_flags_as_the_readme_writes_them(tmp_path: Path) -> None:
    proc = pgolf("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--train.max_wallclock_seconds", "--model.num_layers", "--eval.stride", "--train.compile {True,False}"):
        assert flag in proc.stdout, flag
    fineweb = pgolf("data", "fineweb", "--help", cwd=tmp_path)
    assert fineweb.returncode == 0 and "--train-shards" in fineweb.stdout


def interruptible() -> None:
    """In the child before exec: SIGINT to its default, so Python turns it into KeyboardInterrupt even when
    the suite itself was started with SIGINT ignored (a background job of a non-interactive shell)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_training_still_exports_and_scores(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    import signal
    import time

    root, _ = tiny_run
    metrics = root / "runs/interrupted/metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pgolf", "run", "--preset", "test-tiny", *tiny_flags(root),
                             "--run_id", "interrupted", "--train.iterations", "1000000",
                             "--train.max_wallclock_seconds", "0", "--train.val_loss_every", "0"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"event": "step"' in metrics.read_text()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before its first step: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    s = json.loads((root / "runs/interrupted/summary.json").read_text())
    assert s["stopped_by"] == "interrupted" and 1 <= s["steps"] < 1_000_000
    assert (root / "runs/interrupted/final_model.int8.ptz").exists() and math.isfinite(s["val_bpb"])
    from pgolf.artifact import read_artifact

    # the artifact itself records that its training was cut short
    assert read_artifact(root / "runs/interrupted/final_model.int8.ptz").meta["extra_meta"]["stopped_by"] == "interrupted"


def test_runs_get_their_own_folders_and_never_reuse_one(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = tiny_run
    flags = ["--preset", "test-tiny", *tiny_flags(root), "--train.iterations", "1", "--train.warmup_steps", "0",
             "--train.val_loss_every", "0"]
    # both at once (one core each): two runs started in the same second must still get their own folders
    procs = [subprocess.Popen([sys.executable, "-m", "pgolf", "train", *flags], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    made = sorted(p.name for p in (root / "runs").iterdir() if p.name.startswith("test-tiny-"))
    assert len(made) == 2 and made[0] != made[1]
    for run_id in made:
        header = json.loads((root / "runs" / run_id / "header.json").read_text())
        assert header["run_id"] == run_id
    line = one_line_error(pgolf("train", *flags, "--run_id", made[0], cwd=root))
    assert made[0] in line and "already holds a run" in line


def _start_and_signal(root: Path, run_id: str, extra: list[str], sig: int, wait_for: str) -> subprocess.Popen:
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pgolf", "run", "--preset", "test-tiny", *tiny_flags(root),
                             "--run_id", run_id, "--train.val_loss_every", "0", *extra],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    log = root / "runs" / run_id / "log.txt"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and wait_for in log.read_text()):
        if proc.poll() is not None:  # it ended before the signal could reach it: say why, not a timeout
            pytest.fail(f"the run ended (exit {proc.returncode}) before its log showed {wait_for!r}: "
                        f"{proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(sig)
    return proc


def test_interrupt_during_warmup_is_one_line(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    import signal

    root, _ = tiny_run
    proc = _start_and_signal(root, "warm", ["--train.warmup_steps", "100000"], signal.SIGINT, "batch ")
    out, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], err[-2000:]
    assert not (root / "runs/warm/final_model.int8.ptz").exists()


def test_sigterm_is_handled_like_ctrl_c(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    import signal

    root, _ = tiny_run
    proc = _start_and_signal(root, "term", ["--train.iterations", "1000000", "--train.max_wallclock_seconds", "0",
                                            "--train.warmup_steps", "0"], signal.SIGTERM, "step 1/")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    s = json.loads((root / "runs/term/summary.json").read_text())
    assert s["stopped_by"] == "interrupted" and math.isfinite(s["val_bpb"])


@pytest.mark.parametrize("run_id,flags", [
    ("cached", ["--eval.ngram_order", "2"]),
    # the unadapted pass that eval.mix_unadapted runs first is reused as the fixed-predictor roundtrip
    ("mixed", ["--eval.ngram_order", "2", "--eval.ttt", "lora", "--eval.mix_unadapted", "true",
               "--ttt.lora_mix_lr", "0.01"]),
])
def test_quantisation_gap_leaves_eval_time_adaptation_out(tiny_run: tuple[Path, subprocess.CompletedProcess],
                                                          run_id: str, flags: list[str]) -> None:
    # With the n-gram caches the scored number includes eval-time adaptation; the quantisation gap still compares
    # the reloaded artifact with the trained model as fixed predictors, and the adaptation's share is its own field.
    root, first = tiny_run
    assert first.returncode == 0, first.stderr[-3000:]
    proc = pgolf("run", "--preset", "test-tiny", "--run_id", run_id, *tiny_flags(root), *flags,
                 "--eval.reference_bytes", "0", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((root / "runs" / run_id / "summary.json").read_text())
    plain = json.loads((root / "runs" / "test-tiny" / "summary.json").read_text())
    assert s["roundtrip_val_bpb"] == pytest.approx(plain["val_bpb"], abs=1e-9)  # same seed: the same artifact
    assert s["quant_gap_bpb"] == pytest.approx(s["roundtrip_val_bpb"] - s["pre_quant_val_bpb"], abs=1e-12)
    assert s["adaptation_gain_bpb"] == pytest.approx(s["val_bpb"] - s["roundtrip_val_bpb"], abs=1e-12)
    assert s["adaptation_gain_bpb"] != 0 and plain["adaptation_gain_bpb"] == 0
    assert plain["quant_gap_bpb"] == pytest.approx(plain["val_bpb"] - plain["pre_quant_val_bpb"], abs=1e-12)
    log = (root / "runs" / run_id / "log.txt").read_text()
    assert "roundtrip without adaptation" in log and "from eval-time adaptation" in log
