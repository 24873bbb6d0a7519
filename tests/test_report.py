"""Reports: the PNGs render (real images of the expected size, not blank), the Markdown embeds them,
missing data is said rather than plotted, and the per-tensor byte table matches the stored tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers_runs import fake_run, tiny_config
from pgolf.cli import main

PLOTS = ("loss_time.png", "loss_tokens.png", "val_bpb.png", "lr.png", "tensors.png")


def read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [fake_run(root / "seed1", tiny_config(1), val_bpb=1.30, val_loss=2.0, artifact=True),
            fake_run(root / "seed2", tiny_config(2), val_bpb=1.31, val_loss=2.1)]


def test_report_renders_every_plot(two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    for name in PLOTS:
        img = read_png(out / name)
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600, (name, img.shape)
        assert float(img[..., :3].var()) > 0, f"{name} is blank"
    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in PLOTS)
    assert "| seed1 | 1 | 1.300000 | 2.000000 |" in md and "val_bpb 1.305000 ± 0.007071 over 2 seeds" in md
    # the second run has no artifact: it is left out of the per-tensor plot, and the report says so
    assert "seed2 left out (no per-tensor table in summary.json and no artifact" in md


def test_report_without_curves_says_so(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "r", tiny_config(3), val_bpb=1.2, val_loss=2.0)
    (run / "metrics.jsonl").unlink()
    assert main(["report", str(run)]) == 0
    out = run / "report"  # one run: the report goes into the run folder
    assert (out / "val_bpb.png").is_file() and not (out / "loss_time.png").exists()
    md = (out / "report.md").read_text()
    assert "Training loss against time: no data" in md and "![val_bpb at evaluations](val_bpb.png)" in md


def test_tensor_bytes_match_the_stored_tensors(tmp_path: Path) -> None:
    import torch

    from pgolf.artifact import read_artifact
    from pgolf.model.gpt import GPT
    from pgolf.quant.export import export_model
    from pgolf.report import _rows_from_plans

    cfg = tiny_config(0)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    path = tmp_path / "a.ptz"
    export_model(model, cfg, path, code_bytes=0)
    loaded = read_artifact(path)
    rows = {r.name: r for r in _rows_from_plans(loaded.plans)}
    assert set(rows) == set(model.state_dict())
    # the baseline export: int8 codes with one fp16 scale per row; small tensors kept in float
    for name, t in model.state_dict().items():
        plan = loaded.plans[name]
        if plan.kind == "intx_row":
            assert (rows[name].bits, rows[name].nbytes) == (8.0, t.numel() + 2 * t.shape[0]), name
        else:
            width = {"float32": 4, "float16": 2}[plan.store_dtype]
            assert (rows[name].bits, rows[name].nbytes) == (8.0 * width, t.numel() * width), name


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/header.json").write_text("{}")
    assert main(["report", str(tmp_path / "broken")]) == 2
    assert "summary.json does not exist" in capsys.readouterr().err
