"""Run logging: fixed-format lines, JSONL that survives line by line, rank-0 only, atomic JSON."""

from __future__ import annotations

import json
from pathlib import Path

from pgolf.presets import get_preset
from pgolf.runlog import RunLogger, format_step_line, run_header, write_json_atomic


def test_step_line_format() -> None:
    line = format_step_line(step=1200, total_steps=9000, loss=2.9141, lr_mul=0.85, step_ms=61.3,
                            tokens_per_s=8500.0, train_s=73.4, eta_s=474.0)
    assert line == "step 1200/9000 | loss 2.9141 | lr 0.850 | 61.3 ms | 8.5k tok/s | 73.4 s | eta 7.9 m"


def test_logger_writes_lines_and_metrics(tmp_path: Path) -> None:
    log = RunLogger(tmp_path / "r", echo=False)
    log.line("hello")
    log.metrics("step", step=1, loss=2.5)
    log.metrics("step", step=2, loss=2.4)
    assert (tmp_path / "r/log.txt").read_text() == "hello\n"
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["event"] == "step"


def test_non_main_rank_writes_nothing(tmp_path: Path) -> None:
    log = RunLogger(tmp_path / "r", is_main=False)
    log.line("x")
    log.metrics("step", step=1)
    assert not (tmp_path / "r").exists()


def test_header_is_self_describing(tmp_path: Path) -> None:
    cfg = get_preset("cpu-demo")
    h = run_header(cfg, world_size=1, data_fingerprint={"train_tokens": 10}, command="pgolf run")
    assert h["config"]["model"]["num_layers"] == cfg.model.num_layers
    assert h["seed"] == cfg.train.seed and h["versions"]["torch"] and h["hardware"]["cpu_count"] >= 1
    log = RunLogger(tmp_path, echo=False)
    log.header(h)
    assert json.loads((tmp_path / "header.json").read_text())["config_hash"] == h["config_hash"]


def test_write_json_atomic_leaves_no_temp(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "s.json", {"a": 1})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
