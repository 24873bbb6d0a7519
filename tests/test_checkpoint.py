"""Training checkpoints: the state format round-trips exactly without pickle, a resumed run ends with
bit-identical weights (in process, and through the CLI after a SIGKILL), a changed config is refused
in one line, a non-finite loss stops the run naming the step and keeps the last good checkpoint, and
the calibration reserve and callable count inside the training budget."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers_train import CPU, one_thread, tiny_cfg, write_random_shards  # noqa: F401  (one_thread: autouse)
from pgolf.checkpoint import (CHECKPOINT_NAME, config_difference, flatten_state, load_checkpoint,
                              read_checkpoint_meta, save_checkpoint, unflatten_state)
from pgolf.components import Component, StepEvent
from pgolf.config import EvalConfig, RunConfig
from pgolf.errors import UserError
from pgolf.flags import ADDED_FIELDS
from pgolf.runlog import RunLogger
from pgolf.train import Trainer, budget_seconds, train


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_shards(tmp_path_factory.mktemp("shards"), sizes=(20_000, 13_000), vocab=384, val=True)


def assert_same(a: Any, b: Any) -> None:
    """Deep equality where tensors must match in dtype, shape and every bit."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_state_round_trips_exactly_through_a_file(tmp_path: Path) -> None:
    state = {
        "model": {"w": torch.randn(3, 4), "h": torch.randn(2).to(torch.bfloat16), "empty": torch.zeros(0, 5)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}, 7: {}},
                      "param_groups": [{"params": [0, 7], "betas": (0.9, 0.95), "ns_dtype": torch.bfloat16,
                                        "lr": float("nan"), "cap": float("inf"), "name": "x", "on": True,
                                        "none": None}]},
        "$odd": [1, (2, "3"), {"$tensor": "not a tensor"}],
        "rng": torch.get_rng_state(),
    }
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, state, {"step": 5, "train_seconds": 1.5})
    loaded, meta = load_checkpoint(path)
    assert_same(loaded, state)
    assert meta == {"step": 5, "train_seconds": 1.5} and read_checkpoint_meta(path) == meta
    tensors, skeleton = flatten_state(state)
    json.dumps(skeleton, allow_nan=False)  # the skeleton is strict JSON
    assert_same(unflatten_state(skeleton, tensors), state)


def test_bad_checkpoint_files_are_one_line_user_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(UserError, match="no checkpoint"):
        read_checkpoint_meta(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="not a pgolf training checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_config_difference_names_the_field() -> None:
    a = {"run_id": "a", "out_dir": "x", "train": {"iterations": 5, "seed": 1}, "quant": {"bits": (6, 8)}}
    b = {"run_id": "b", "out_dir": "y", "train": {"iterations": 5, "seed": 1}, "quant": {"bits": [6, 8]}}
    assert config_difference(a, b) is None  # place fields ignored; tuples compare as JSON lists
    b["train"]["seed"] = 2
    assert config_difference(a, b) == "train.seed: 1 -> 2"
    # a checkpoint from before eval.compile (and the other added fields) existed reads it as False
    old, new = {"eval": {"stride": 0}}, {"eval": {"stride": 0, **ADDED_FIELDS[EvalConfig]}}
    assert config_difference(old, new) is None
    new["eval"]["compile"] = True
    assert config_difference(old, new) == "eval.compile: False -> True"


class StopAt(Component):
    """Interrupts training inside step `at` (as Ctrl-C would), after the optimiser moved the weights."""

    name = "stop_at"

    def __init__(self, at: int) -> None:
        self.at = at

    def update(self, event: StepEvent) -> None:
        if event.step == self.at:
            raise KeyboardInterrupt


def all_techniques(cfg: RunConfig) -> RunConfig:
    o, t = cfg.optim, cfg.train
    o.muon_row_normalize, o.muon_ns_coeffs, o.muon_sharded, o.muon_batched = True, "polar_express", True, True
    o.muon_wd, o.embed_wd, o.adam_wd, o.wd_taper_start_frac, o.wd_taper_final = 0.05, 0.02, 0.01, 0.5, 0.5
    o.lr_warmup_steps, o.min_lr_frac, o.muon_momentum_warmup_steps = 2, 0.1, 5
    t.warmdown_frac, t.ema_decay, t.swa_every, t.swa_lr_threshold, t.sensitivity_frac = 0.5, 0.9, 1, 0.9, 0.5
    t.data_order = "shuffled"
    return cfg


def run(cfg: RunConfig, run_dir: Path | None, stop_at: int = 10**9, resume_from: Path | None = None) -> Any:
    trainer = Trainer(cfg, CPU)
    trainer.add_component(StopAt(stop_at))
    return train(cfg, CPU, RunLogger(run_dir, echo=False), trainer=trainer, resume_from=resume_from)


def test_resume_in_process_is_bit_exact_with_every_technique(shard_dir: Path, tmp_path: Path) -> None:
    cfg = all_techniques(tiny_cfg(shard_dir, iterations=9, warmup=1))
    cfg.model.vocab_size = 384
    reference = run(cfg, None)
    cfg.train.checkpoint_every_seconds = 1e-9  # every step
    interrupted = run(cfg, tmp_path, stop_at=6)
    assert interrupted.stopped_by == "interrupted"
    assert read_checkpoint_meta(tmp_path / CHECKPOINT_NAME)["step"] == 5
    resumed = run(cfg, tmp_path, resume_from=tmp_path / CHECKPOINT_NAME)
    assert resumed.steps == 9 and resumed.export_source == "ema"
    for got, want in ((resumed.model, reference.model), (resumed.live_model, reference.live_model)):
        assert_same(got.state_dict(), want.state_dict())
    assert resumed.sensitivity == reference.sensitivity and resumed.final_train_loss == reference.final_train_loss
    cfg.train.seed += 1
    with pytest.raises(UserError, match="train.seed"):
        run(cfg, tmp_path, resume_from=tmp_path / CHECKPOINT_NAME)


class PoisonAt(Component):
    """Makes a weight NaN inside step `at`, as a blown-up update would."""

    name = "poison"

    def __init__(self, model: torch.nn.Module, at: int) -> None:
        self.model, self.at = model, at

    def update(self, event: StepEvent) -> None:
        if event.step == self.at:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")


@pytest.mark.parametrize("checkpoints", [False, True])
def test_non_finite_training_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        shard_dir: Path, tmp_path: Path, checkpoints: bool) -> None:
    cfg = tiny_cfg(shard_dir, iterations=8, warmup=0)
    cfg.model.vocab_size = 384
    cfg.train.checkpoint_every_seconds = 1e-9 if checkpoints else 0.0
    trainer = Trainer(cfg, CPU)
    trainer.add_component(PoisonAt(trainer.model, at=3))
    with pytest.raises(UserError) as err:
        train(cfg, CPU, RunLogger(tmp_path, echo=False), trainer=trainer)
    message = str(err.value)
    assert "\n" not in message
    if checkpoints:  # refused before writing step 3's poisoned weights
        assert "after step 3" in message and "(step 2)" in message
        state, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
        assert meta["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    else:  # the next loss shows it
        assert "nan at step 4" in message and "no checkpoint was written" in message


def test_calibration_reserve_and_callable_count_inside_the_budget(shard_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=100_000, warmup=0)
    cfg.model.vocab_size = 384
    cfg.train.max_wallclock_seconds, cfg.train.calibration_reserve_seconds = 30.0, 29.5
    assert budget_seconds(cfg) == pytest.approx(0.5)
    trainer = Trainer(cfg, CPU)
    assert trainer.schedule(10, 0.45).lr_mul < 1.0  # the warm-down ends at the reserve, not at 30 s

    def calibrate(model: torch.nn.Module, tr: Trainer, seconds_left: float | None) -> str:
        assert model is tr.model  # no average on: the live model is the one to export
        assert seconds_left is not None and 0 < seconds_left <= 29.5  # the reserve, less the last step
        time.sleep(0.2)
        return "hessians"

    result = train(cfg, CPU, RunLogger(tmp_path, echo=False), trainer=trainer, calibrate=calibrate)
    loop_s = result.train_seconds - result.calibration_seconds
    assert result.stopped_by == "wallclock" and 0.5 <= loop_s < 30.0
    assert result.calibration == "hessians" and result.calibration_seconds >= 0.2
    assert "calibration" in (tmp_path / "log.txt").read_text()


def cli_flags(shard_dir: Path, tokenizer: Path, out: Path, name: str) -> list[str]:
    return ["--preset", "test-tiny", "--run_id", name, "--out_dir", str(out), "--model.vocab_size", "384",
            "--data.source", "fineweb", "--data.dataset_dir", str(shard_dir), "--data.tokenizer_path", str(tokenizer),
            "--train.iterations", "24", "--train.warmup_steps", "1", "--train.train_batch_tokens", "512",
            "--train.train_seq_len", "32", "--train.max_wallclock_seconds", "0",
            "--train.dtype", "float32", "--optim.muon_dtype", "float32", "--train.ema_decay", "0.9",
            "--train.data_order", "shuffled", "--train.sensitivity_frac", "0.5", "--optim.muon_wd", "0.02",
            "--train.checkpoint_every_seconds", "0.02"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def kill_after_checkpoint(proc: subprocess.Popen, ckpt: Path, min_step: int, timeout: float = 180.0) -> None:
    """SIGKILL `proc` as soon as `ckpt` holds a step >= min_step (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ckpt.exists() and read_checkpoint_meta(ckpt)["step"] >= min_step:
                break
        except UserError:  # caught between the rename and the read: look again
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)


def test_sigkill_then_resume_through_the_cli_is_bit_exact(shard_dir: Path, tiny_tokenizer: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pgolf.cli import main

    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "pgolf", "train",
                             *cli_flags(shard_dir, tiny_tokenizer, tmp_path, "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The uninterrupted reference runs here while the other process starts; a thread kills it midway.
    killer = threading.Thread(target=kill_after_checkpoint, args=(proc, run_dir / CHECKPOINT_NAME, 3))
    killer.start()
    try:
        assert main(["train", *cli_flags(shard_dir, tiny_tokenizer, tmp_path, "reference")]) == 0
    finally:
        killer.join()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = read_checkpoint_meta(run_dir / CHECKPOINT_NAME)["step"]
    assert 3 <= killed_at < 24 and not (run_dir / "final_model.safetensors").exists()

    assert main(["train", "--resume", str(run_dir), "--train.iterations", "25"]) == 2
    err_text = capsys.readouterr().err.strip()
    assert "train.iterations: 24 -> 25" in err_text and len(err_text.splitlines()) == 1

    assert main(["train", "--resume", str(run_dir)]) == 0
    assert f"resumed from {run_dir / CHECKPOINT_NAME} at step {killed_at}" in (run_dir / "log.txt").read_text()
    want, got = weights(tmp_path / "reference" / "final_model.safetensors"), weights(run_dir / "final_model.safetensors")
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    sensitivity = json.loads((run_dir / "sensitivity.json").read_text())
    assert sensitivity == json.loads((tmp_path / "reference" / "sensitivity.json").read_text()) and sensitivity
