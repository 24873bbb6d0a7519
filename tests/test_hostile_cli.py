"""Bad flags, bad data, lying artifacts and non-finite losses through the command line (issue 10), table-driven:
every row must exit with status 2 and exactly one stderr line naming the flag or file, no traceback, and leave
every file under the test's folder as it was (no run folder, no artifact, no data file changed). Checks that
used to fail only after training (`--quant.level 99`, a bad `--out_dir`) must fail before any data preparation.

Rows run `pgolf.cli.main` in this process (the same entry point as the `pgolf` command, whose exit status it
returns); a few rows also run as a real `python -m pgolf` process to check the process-level behaviour."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pgolf import artifact, cli
from pgolf.config import RunConfig
from pgolf.data.shards import shard_name, write_shard
from pgolf.model.gpt import GPT
from pgolf.model.roles import param_roles
from pgolf.presets import get_preset
from pgolf.quant.export import export_model

VOCAB = 384  # the session's tiny tokenizer (helpers_text.TINY_VOCAB)
Header = dict[str, Any]


# ---------------------------------------------------------------- the world: data, tokenizer, artifacts

def tiny_config(root: Path, **model: Any) -> RunConfig:
    cfg = get_preset("test-tiny")
    cfg = dataclasses.replace(cfg, out_dir=str(root / "runs"), model=dataclasses.replace(cfg.model, vocab_size=VOCAB,
                                                                                         **model))
    return cfg.validate()


def write_split(folder: Path, split: str, indices: list[int], num_tokens: int, seed: int, bad_id: int = -1) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        tokens = rng.integers(0, VOCAB, num_tokens)
        tokens[0] = 1  # BOS
        if bad_id >= 0:
            tokens[num_tokens // 2] = bad_id
        write_shard(folder / shard_name(split, i), tokens)


def export_tiny(path: Path, root: Path, scale: float | None = None, **model: Any) -> Path:
    """A real artifact of a test-tiny model (vocab 384) with non-zero weights; `scale` sets every residual
    branch scale (a finite value that makes the forward pass overflow when huge)."""
    cfg = tiny_config(root, **model)
    torch.manual_seed(0)
    gpt = GPT(cfg.model)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            p.add_(torch.randn(p.shape) * 0.05)
            if scale is not None and param_roles(gpt)[name] == "control" and name.endswith(("attn_scale", "mlp_scale")):
                p.fill_(scale)
    export_model(gpt, cfg, path, code_bytes=1000)
    return path


def rewrite(src: Path, dst: Path, edit: Callable[[Header], None]) -> Path:
    """`src` with its JSON header edited and both digests recomputed (a careful liar)."""
    blob = src.read_bytes()
    raw = artifact.read_payload(src, artifact.unpack_header(src, blob))
    header, data = artifact.parse_payload(src, raw)
    edit(header)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    new_raw = struct.pack("<I", len(text)) + text + bytes(data)
    payload = zlib.compress(new_raw)
    dst.write_bytes(artifact.pack_header("zlib", new_raw, payload) + payload)
    return dst


def set_model(field: str, value: Any) -> Callable[[Header], None]:
    def edit(h: Header) -> None:
        h["model_config"][field] = value
        h["run_config"]["model"][field] = value
    return edit


def set_run(section: str, field: str, value: Any) -> Callable[[Header], None]:
    def edit(h: Header) -> None:
        h["run_config"][section][field] = value
    return edit


def unwritable_folder(root: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or /sys for root (who ignores modes)."""
    if os.geteuid() != 0:
        folder = root / "readonly"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return folder / "runs"
    return Path("/sys/pgolf-runs")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    root = tmp_path_factory.mktemp("hostile_cli")
    (root / "tok.model").write_bytes(tiny_tokenizer.read_bytes())
    good = root / "data/good"
    write_split(good, "train", [0], 40_000, seed=1)
    write_split(good, "val", [0], 4_000, seed=2)
    write_split(root / "data/badid", "train", [0], 40_000, seed=1, bad_id=VOCAB)
    write_split(root / "data/badid", "val", [0], 4_000, seed=2)
    write_split(root / "data/badval", "train", [0], 40_000, seed=1)
    write_split(root / "data/badval", "val", [0], 4_000, seed=2, bad_id=500)
    write_split(root / "data/gap", "train", [0, 2], 2_000, seed=3)
    write_split(root / "data/gap", "val", [0], 4_000, seed=2)
    write_split(root / "data/valgap", "train", [0], 40_000, seed=1)
    write_split(root / "data/valgap", "val", [0, 2], 2_000, seed=2)
    write_split(root / "data/dup", "train", list(range(11)), 500, seed=4)
    write_split(root / "data/dup", "val", [0], 4_000, seed=2)
    (root / "data/dup/fineweb_train_0000010.bin").write_bytes((root / "data/dup" / shard_name("train", 10)).read_bytes())
    (root / "afile").write_text("not a folder\n")
    arts = root / "artifacts"
    arts.mkdir()
    base = export_tiny(arts / "base.ptz", root)
    nine = export_tiny(arts / "nine.ptz", root, num_layers=9)
    rewrite(base, arts / "heads_abc.ptz", set_model("num_heads", "abc"))
    rewrite(nine, arts / "layers_3_of_9.ptz", set_model("num_layers", 3))
    rewrite(base, arts / "layers_10000.ptz", set_model("num_layers", 10_000))
    rewrite(base, arts / "dim_16384.ptz", set_model("model_dim", 16_384))
    rewrite(base, arts / "tokenizer_int.ptz", set_run("data", "tokenizer_path", 5))
    rewrite(base, arts / "budget_str.ptz", set_run("budget", "artifact_max_bytes", "abc"))
    export_tiny(arts / "overflow.ptz", root, scale=3e38)
    return root


# ---------------------------------------------------------------- running and checking a row

def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `root` with its size, mtime and content hash (folders by their presence)."""
    state: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            state[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (0, 0, "")
        for f in filenames:
            p = Path(dirpath) / f
            st = p.stat()
            state[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`pgolf ARGS` in this process: (exit status, stdout, stderr); the SIGTERM handler it installs is undone."""
    before = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        code = cli.main(args)
    finally:
        signal.signal(signal.SIGTERM, before)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str) -> str:
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def train_args(root: Path, data: str = "good", *extra: str, verb: str = "train", out_dir: Path | None = None) -> list[str]:
    return [verb, "--preset", "test-tiny", "--model.vocab_size", str(VOCAB), "--data.source", "fineweb",
            "--data.dataset_dir", str(root / "data" / data), "--data.tokenizer_path", str(root / "tok.model"),
            "--out_dir", str(out_dir or root / "runs"), *extra]


# ---------------------------------------------------------------- the table

Row = tuple[Callable[[Path], list[str]], Callable[[Path], str]]

ROWS: dict[str, Row] = {
    # flags: refused at parse time, before any data or training
    "quant-level-99": (lambda r: train_args(r, "good", "--quant.level", "99"), lambda r: "quant.level"),
    "quant-level-99-run": (lambda r: train_args(r, "good", "--quant.level", "99", verb="run"), lambda r: "quant.level"),
    "budget-negative": (lambda r: train_args(r, "good", "--budget.artifact_max_bytes", "-1"),
                        lambda r: "budget.artifact_max_bytes"),
    "rope-base-0": (lambda r: train_args(r, "good", "--model.rope_base", "0"), lambda r: "model.rope_base"),
    "init-std-negative": (lambda r: train_args(r, "good", "--model.tied_embed_init_std", "-1"),
                          lambda r: "model.tied_embed_init_std"),
    "mlp-mult-nan": (lambda r: train_args(r, "good", "--model.mlp_mult", "nan"), lambda r: "model.mlp_mult"),
    "seed-negative": (lambda r: train_args(r, "good", "--train.seed", "-1"), lambda r: "train.seed"),
    # a flag that takes a value, given none
    "preset-without-name": (lambda r: ["train", "--preset"], lambda r: "--preset needs a name"),
    "resume-without-folder": (lambda r: ["train", "--resume"], lambda r: "--resume needs the run folder"),
    # out_dir: probed before data preparation (embedded data under a fresh root would be prepared first)
    "out-dir-file-train": (lambda r: train_args(r, out_dir=r / "afile"),
                           lambda r: str(r / "afile")),
    "out-dir-file-run": (lambda r: ["run", "--preset", "test-tiny", "--data.root", str(r / "fresh"),
                                    "--out_dir", str(r / "afile" / "runs")], lambda r: str(r / "afile")),
    "out-dir-unwritable-train": (lambda r: train_args(r, out_dir=unwritable_folder(r)),
                                 lambda r: str(unwritable_folder(r))),
    "out-dir-unwritable-run": (lambda r: ["run", "--preset", "test-tiny", "--data.root", str(r / "fresh"),
                                          "--out_dir", str(unwritable_folder(r))], lambda r: str(unwritable_folder(r))),
    # bad data: one line naming the shard, before the run folder is written
    "train-id-over-vocab": (lambda r: train_args(r, "badid"), lambda r: str(r / "data/badid/fineweb_train_000000.bin")),
    "train-id-over-vocab-run": (lambda r: train_args(r, "badid", verb="run"),
                                lambda r: str(r / "data/badid/fineweb_train_000000.bin")),
    "val-id-over-vocab-run": (lambda r: train_args(r, "badval", verb="run"),
                              lambda r: str(r / "data/badval/fineweb_val_000000.bin")),
    "train-numbering-gap": (lambda r: train_args(r, "gap"), lambda r: "fineweb_train_000001.bin is missing"),
    "val-numbering-gap-run": (lambda r: train_args(r, "valgap", verb="run"), lambda r: "fineweb_val_000001.bin is missing"),
    "train-duplicate-index": (lambda r: train_args(r, "dup"), lambda r: str(r / "data/dup/fineweb_train_0000010.bin")),
    # artifacts whose stored configs lie (both digests recomputed)
    "artifact-heads-str": (lambda r: ["eval", str(r / "artifacts/heads_abc.ptz")], lambda r: "model_config.num_heads"),
    "artifact-layers-3-of-9": (lambda r: ["eval", str(r / "artifacts/layers_3_of_9.ptz")], lambda r: "blocks.3."),
    "artifact-layers-10000": (lambda r: ["eval", str(r / "artifacts/layers_10000.ptz")], lambda r: "num_layers=10000"),
    "artifact-dim-16384": (lambda r: ["eval", str(r / "artifacts/dim_16384.ptz")], lambda r: "model_config implies"),
    "artifact-tokenizer-int": (lambda r: ["eval", str(r / "artifacts/tokenizer_int.ptz")],
                               lambda r: "run_config.data.tokenizer_path"),
    "artifact-budget-str": (lambda r: ["eval", str(r / "artifacts/budget_str.ptz")],
                            lambda r: "run_config.budget.artifact_max_bytes"),
    "artifact-heads-str-preset": (lambda r: ["eval", str(r / "artifacts/heads_abc.ptz"), "--preset", "test-tiny"],
                                  lambda r: "model_config.num_heads"),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_hostile_row_is_one_line_and_writes_nothing(name: str, world: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    make_args, names = ROWS[name]
    monkeypatch.chdir(world)  # a relative default path would land here, where the snapshot sees it
    before = snapshot(world)
    code, out, err = run_cli(make_args(world), capsys)
    line = one_line(code, err)
    assert names(world) in line, line
    if name.startswith("artifact-"):
        assert make_args(world)[1] in line, line  # the file is named too
    assert snapshot(world) == before


# ---------------------------------------------------------------- bad data below the command line

@pytest.mark.parametrize("order", ["challenge", "seeded", "shuffled"])
def test_every_loader_checks_each_shard_once_when_it_opens_it(order: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Three shards read round and round: each one's ids are checked exactly once, whatever the order, and
    # a shard holding an id outside the vocabulary is named when it is opened (not an IndexError later).
    from pgolf.data import loader, shards
    from pgolf.errors import UserError

    write_split(tmp_path / "ok", "train", [0, 1, 2], 300, seed=5)
    paths = sorted((tmp_path / "ok").glob("fineweb_train_*.bin"))
    checked: list[str] = []
    real = shards.check_token_ids
    monkeypatch.setattr(shards, "check_token_ids", lambda p, t, v: (checked.append(Path(p).name), real(p, t, v)))
    stream = loader.build_loader(paths, data_order=order, seed=3, rank=0, world_size=1, seq_len=16, vocab_size=VOCAB)
    for _ in range(40):  # 40 x 65 tokens: every shard read, the stream wrapped at least twice
        x, y = stream.next_batch(64, 16)
        assert int(x.max()) < VOCAB
    assert sorted(checked) == sorted(p.name for p in paths), checked
    write_split(tmp_path / "bad", "train", [0, 1, 2], 300, seed=5)
    write_split(tmp_path / "bad", "train", [1], 300, seed=6, bad_id=VOCAB + 7)
    bad = sorted((tmp_path / "bad").glob("fineweb_train_*.bin"))
    with pytest.raises(UserError, match=f"{bad[1]} holds token id {VOCAB + 7}, outside the vocabulary of {VOCAB}"):
        stream = loader.build_loader(bad, data_order=order, seed=3, rank=0, world_size=1, seq_len=16,
                                     vocab_size=VOCAB)
        for _ in range(40):
            stream.next_batch(64, 16)


def test_the_ledger_refuses_a_non_finite_sum_naming_the_position() -> None:
    from pgolf.errors import UserError
    from pgolf.eval.bpb import TokenLedger
    from pgolf.tokenizer import ByteLuts

    luts = ByteLuts(base_bytes=torch.ones(8, dtype=torch.int16), has_leading_space=torch.zeros(8, dtype=torch.bool),
                    is_boundary=torch.zeros(8, dtype=torch.bool))
    for bad in (float("nan"), float("inf")):
        ledger = TokenLedger(torch.arange(10) % 8, luts)
        nll = torch.ones(1, 9)
        nll[0, 4] = bad
        ledger.commit(np.array([[0, 0, 9]]), nll)
        with pytest.raises(UserError, match=r"non-finite loss: the summed nll is (nan|inf) \(first at validation "
                                            r"token 5 of 10\)"):
            ledger.finish()
    ledger = TokenLedger(torch.arange(10) % 8, luts)
    ledger.commit(np.array([[0, 0, 9]]), torch.ones(1, 9))
    totals, _ = ledger.finish()  # finite: the sums as before
    assert float(totals.nll_sum) == 9.0


# ---------------------------------------------------------------- non-finite losses

def test_training_loss_going_non_finite_stops_with_one_line(world: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world)
    out_dir = world / "nan_runs"
    args = train_args(world, "good", "--optim.embed_lr", "1e30", "--optim.matrix_lr", "1e30", "--optim.scalar_lr",
                      "1e30", "--run_id", "nan", out_dir=out_dir)
    code, out, err = run_cli(args, capsys)
    line = one_line(code, err)
    assert "training loss is" in line and "at step" in line, line
    assert not (out_dir / "nan" / "final_model.int8.ptz").exists()  # stopped at once: nothing exported


def test_non_finite_evaluation_is_an_error_not_a_score(world: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Every stored value is finite (the loader accepts the file), but residual scales of 3e38 overflow the
    # forward pass: the evaluation must fail naming the cause instead of printing `val_bpb nan`.
    monkeypatch.chdir(world)
    art = world / "artifacts/overflow.ptz"
    loaded = artifact.read_artifact(art)
    assert all(bool(torch.isfinite(v).all()) for v in loaded.state.values())
    before = snapshot(world)
    code, out, err = run_cli(["eval", str(art), "--data.dataset_dir", str(world / "data/good"),
                              "--data.tokenizer_path", str(world / "tok.model")], capsys)
    line = one_line(code, err)
    assert "non-finite loss" in line and "validation token" in line, line
    assert "val_bpb" not in out
    assert snapshot(world) == before  # no compliance.json beside the artifact


def test_the_clean_artifact_evaluates(world: Path) -> None:
    # The control of the rows above: the unedited artifact on the same data scores a finite val_bpb, so each
    # row fails for its own lie and not for the test's setup.
    from pgolf.config import run_config_from_dict
    from pgolf.dist import init
    from pgolf.scoring import score_artifact

    art = world / "artifacts/base.ptz"
    cfg = run_config_from_dict(artifact.read_artifact(art).run_config)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(world / "data/good"),
                                                            tokenizer_path=str(world / "tok.model")))
    before = snapshot(world)
    scored = score_artifact(art, cfg, init())
    assert math.isfinite(scored.result.bpb) and scored.result.num_tokens > 1000
    assert snapshot(world) == before


# ---------------------------------------------------------------- as a real process

@pytest.mark.parametrize("name", ["quant-level-99-run", "train-id-over-vocab"])
def test_rows_as_a_real_process(name: str, world: Path) -> None:
    make_args, names = ROWS[name]
    before = snapshot(world)
    proc = subprocess.run([sys.executable, "-m", "pgolf", *make_args(world)], cwd=world, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = one_line(proc.returncode, proc.stderr)
    assert line.startswith("pgolf: error: ") and names(world) in line, line
    assert snapshot(world) == before
