"""`pgolf inspect`: the parameter table partitions the model, the code bytes are the bundle's, the step
timing runs real steps and its budget arithmetic holds, and the technique table reads the config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pgolf.bundle import code_bytes
from pgolf.cli import main
from pgolf.inspect import format_report, inspect_config, technique_states
from pgolf.steptime import StepTiming, steps_in_budget, time_steps
from pgolf.model.gpt import GPT, count_parameters
from pgolf.presets import derive, get_preset


def test_tiny_report_partitions_parameters_and_times_real_steps() -> None:
    cfg = get_preset("test-tiny")
    report = inspect_config("test-tiny", cfg, steps=1)
    p = report.params
    assert p.total == count_parameters(GPT(cfg.model))
    assert sum(p.by_role.values()) == p.total == sum(g["num_params"] for g in p.groups)
    assert {g["optimizer"] for g in p.groups} == {"Adam", "Muon"}
    assert report.bytes.code_bytes == code_bytes(cfg)
    assert report.bytes.model_bytes == report.bytes.header_bytes + round(sum(ln.bytes for ln in report.bytes.lines))
    assert sum(ln.params for ln in report.bytes.lines) == p.total  # every parameter is stored in some format
    t = report.timing
    assert t is not None and set(t.step_seconds) == {"step"}
    assert math.isfinite(t.step_seconds["step"]) and t.step_seconds["step"] > 0
    assert t.micro_batches == cfg.train.grad_accum_steps and t.probe_seqs == t.micro_seqs  # the whole step ran
    assert t.steps_in_budget == min(int(cfg.train.max_wallclock_seconds / t.step_seconds["step"]), cfg.train.iterations)
    assert report.techniques == []
    text = "\n".join(format_report(report))
    assert "parameters" in text and "artifact estimate" in text and "step time" in text
    assert "reproduces no record" in text


def test_steps_in_budget_splits_the_budget_at_the_loop_switch() -> None:
    cfg = derive(get_preset("test-tiny"), name="t", model=dict(num_loops=1, loop_start=0, loop_end=0,
                                                                 loop_enable_frac=0.25),
                 train=dict(iterations=10_000))
    # a quarter of 60 s at 0.5 s per step, then three quarters at 1.5 s per step
    assert steps_in_budget(cfg, {"one pass": 0.5, "looped": 1.5}, 60.0) == 30 + 30
    assert steps_in_budget(cfg, {"one pass": 0.5, "looped": 1.5}, 0.0) == 10_000  # no budget: the step limit
    plain = get_preset("test-tiny")
    assert steps_in_budget(plain, {"step": 0.01}, 60.0) == plain.train.iterations  # capped by train.iterations


def test_a_large_micro_batch_is_timed_on_a_probe_and_scaled() -> None:
    # depth recurrence: both plans are timed; one micro-batch of 32 sequences is probed with 2
    cfg = derive(get_preset("test-tiny"), name="t", model=dict(num_loops=1, loop_start=0, loop_end=0,
                                                                 loop_enable_frac=0.35),
                 train=dict(grad_accum_steps=1, calibration_reserve_seconds=5.0))
    t = time_steps(cfg, steps=1, probe_seqs=2, device=torch.device("cpu"))
    assert isinstance(t, StepTiming) and set(t.step_seconds) == {"one pass", "looped"}
    assert (t.probe_seqs, t.micro_seqs, t.micro_batches) == (2, 32, 1)
    assert all(s > t.optimizer_seconds[k] > 0 for k, s in t.step_seconds.items())
    assert t.budget_seconds == cfg.train.max_wallclock_seconds - 5.0
    assert t.steps_in_budget == steps_in_budget(cfg, t.step_seconds, t.budget_seconds)


def test_record_preset_reports_list_techniques_and_the_records_measurements() -> None:
    # the CPU preset's switches on a 2-block model, so the timed steps are quick
    small = derive(get_preset("cpu-record-414"), name="cpu-record-414",
                   model=dict(num_layers=2, xsa_last_n=1, value_embed_layers=(1,)))
    cpu = inspect_config("cpu-record-414", small, steps=1, probe_seqs=1)
    assert cpu.timing is not None and cpu.bytes.fits and cpu.bytes.budget_bytes == 1_000_000
    text = "\n".join(format_report(cpu))
    assert "step time on this machine" in text and "techniques of PR #414" in text
    assert "model.xsa_last_n=1" in text  # each row shows the fields that carry it, with their values
    states = {t.name: s for s, t in cpu.techniques}
    assert states["11 layers (baseline 9)"] == "off"  # 2 blocks are fewer than cpu-baseline's 7
    assert "the record measured" not in text  # the record's own figures are for the challenge preset
    report = inspect_config("record-414", get_preset("record-414"), steps=0)
    assert report.timing is None and report.params.total == 26_993_756
    states = {t.name: s for s, t in report.techniques}
    assert states["late QAT: int6 STE fake-quantisation once the LR scale falls below 0.15"] == "on"
    assert states["XSA on the last 4 layers"] == "on"
    text = "\n".join(format_report(report))
    assert "not built" in text and "CUDA only" in text
    assert "the record measured (seed 1337 log)" in text and "15,555,017" in text


def test_cpu_record_techniques_follow_overrides() -> None:
    from pgolf.flags import apply_overrides

    cfg = apply_overrides(get_preset("cpu-record-609"), ["--quant.prune", "False"])
    states = {t.name: s for s, t in technique_states("cpu-record-609", cfg)}
    assert states["selective +-1 pruning until the artifact fits"] == "off"
    assert states["parameter banking (Q/O, K/V, MLP weights stacked in 3-D banks, reduce-scatter per bank)"] == "not built"


def test_cli_inspect_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inspect.json"
    assert main(["inspect", "--preset", "test-tiny", "--steps", "0", "--model.num_layers", "3",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pgolf inspect --preset test-tiny: 3 blocks x 64" in text
    data = json.loads(out.read_text())
    assert data["parameters"] == count_parameters(GPT(derive(get_preset("test-tiny"), name="t",
                                                             model=dict(num_layers=3)).model))
    assert data["bytes"]["total"] == data["bytes"]["code"] + data["bytes"]["model"] and "timing" not in data


@pytest.mark.parametrize("args,message", [
    (["--preset", "test-tiny", "--steps", "-1"], "--steps must be >= 0"),
    (["--preset", "test-tiny", "--nproc", "3"], "not divisible by the world size 3"),
    (["--steps", "0"], "needs --preset"),
])
def test_cli_inspect_mistakes_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_inspect_help_names_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--steps", "--compile", "--probe-seqs", "--nproc", "--json", "record-414"))
