"""Config validation names the flag; presets are complete and keep the challenge's values; the CPU
presets fit the CPU track's byte budget even with incompressible (random-normal) weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pgolf.config import (SECTIONS, ConfigError, ModelConfig, RunConfig, TrainConfig, config_hash, config_to_dict,
                          run_config_from_dict)
from pgolf.flags import ADDED_FIELDS
from pgolf.presets import PRESETS, get_preset
from pgolf.errors import UserError


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name: str) -> None:
    cfg = get_preset(name)
    assert isinstance(cfg, RunConfig)
    cfg.validate()
    assert cfg.name == name


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(UserError, match="cpu-demo"):
        get_preset("cpu-dmeo")


def test_baseline_preset_is_the_challenge_baseline() -> None:
    cfg = get_preset("baseline-8xh100")
    m, t, o, q = cfg.model, cfg.train, cfg.optim, cfg.quant
    assert (m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads, m.mlp_mult, m.vocab_size) == (9, 512, 8, 4, 2.0, 1024)
    assert (m.tie_embeddings, m.tied_embed_init_std, m.logit_softcap, m.qk_gain_init, m.rope_base) == (True, 0.005, 30.0, 1.5, 10000.0)
    assert (t.train_batch_tokens, t.train_seq_len, t.grad_accum_steps, t.warmdown_iters, t.warmup_steps) == (524_288, 1024, 8, 1200, 20)
    assert t.max_wallclock_seconds == 600.0 and t.iterations == 20_000 and t.seed == 1337
    assert (o.matrix_lr, o.scalar_lr, o.tied_embed_lr, o.muon_momentum, o.muon_momentum_warmup_start) == (0.04, 0.04, 0.05, 0.95, 0.85)
    assert (o.muon_momentum_warmup_steps, o.muon_backend_steps, o.beta1, o.beta2, o.grad_clip_norm) == (500, 5, 0.9, 0.95, 0.0)
    assert (q.clip_percentile, q.keep_float_max_numel, q.compressor, q.level) == (99.99984, 65_536, "zlib", 9)
    assert cfg.budget.artifact_max_bytes == 16_000_000 and cfg.data.source == "fineweb"
    assert cfg.eval_stride == cfg.eval_seq_len == 1024


@pytest.mark.parametrize("field,value,flag", [
    ("num_heads", 6, "model.num_heads"),
    ("num_kv_heads", 3, "model.num_kv_heads"),
    ("num_layers", 0, "model.num_layers"),
])
def test_model_validation_names_the_flag(field: str, value: int, flag: str) -> None:
    cfg = dataclasses.replace(ModelConfig(), **{field: value})
    with pytest.raises(ConfigError, match=flag):
        cfg.validate()


def test_batch_geometry_validation() -> None:
    with pytest.raises(ConfigError, match="train.train_batch_tokens"):
        TrainConfig(train_batch_tokens=1000, train_seq_len=64, grad_accum_steps=2).validate()


def test_config_hash_is_stable_and_sensitive() -> None:
    a, b = get_preset("cpu-demo"), get_preset("cpu-demo")
    assert config_hash(a) == config_hash(b)
    b.model.num_layers += 1
    assert config_hash(a) != config_hash(b)


@pytest.mark.parametrize("source,vocab,dataset,tokenizer", [
    ("embedded", 1024, "data/datasets/embedded_sp1024", "data/tokenizers/embedded_1024_bpe.model"),
    ("embedded", 4096, "data/datasets/embedded_sp4096", "data/tokenizers/embedded_4096_bpe.model"),
    ("fineweb", 8192, "data/datasets/fineweb10B_sp8192", "data/tokenizers/fineweb_8192_bpe.model"),
])
def test_data_paths_follow_the_vocabulary(source: str, vocab: int, dataset: str, tokenizer: str) -> None:
    from pgolf.flags import apply_overrides

    cfg = apply_overrides(get_preset("cpu-baseline"), ["--data.source", source, "--model.vocab_size", str(vocab)])
    assert (cfg.dataset_dir, cfg.tokenizer_path) == (dataset, tokenizer)
    explicit = apply_overrides(cfg, ["--data.dataset_dir", "x", "--data.tokenizer_path", "y.model"])
    assert (explicit.dataset_dir, explicit.tokenizer_path) == ("x", "y.model")


def test_experiment_hash_ignores_seed_and_run_identity_only() -> None:
    a, b = get_preset("cpu-demo"), get_preset("cpu-demo")
    b.train.seed, b.run_id, b.out_dir = 42, "other", "elsewhere"
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, ignore_seed=True) == config_hash(b, ignore_seed=True)
    b.model.num_layers += 1
    assert config_hash(a, ignore_seed=True) != config_hash(b, ignore_seed=True)


def test_presets_verb_lists_every_preset_in_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from pgolf.cli import main

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert len({line.index("|") for line in lines}) == 1  # the longest name does not push its row out


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_presets_verb_into_a_closed_pipe_exits_quietly(unbuffered: str) -> None:
    import os
    import subprocess
    import sys

    # `pgolf presets | head -1` when the reader has already left: no traceback, no "Exception ignored"
    # at exit, exit 0 (with line-buffered and block-buffered stdout)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "pgolf", "presets"], stdout=write, stderr=subprocess.PIPE,
                              env=env, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()


def test_a_config_stored_by_an_earlier_version_still_reads() -> None:
    # A run config as pgolf wrote it into artifacts and checkpoints at commit ea9ee33 (cpu-record-tuned).
    # A field added since must be listed in pgolf.flags.ADDED_FIELDS with the value that does what the old
    # config did, or every artifact written before it stops loading ("lacks field").
    stored = json.loads((Path(__file__).parent / "data" / "run_config-ea9ee33.json").read_text())
    cfg = run_config_from_dict(stored)
    now = config_to_dict(cfg)
    for section, cls in SECTIONS.items():
        for name, value in ADDED_FIELDS.get(cls, {}).items():
            if name not in stored[section]:
                assert now[section].pop(name) == value
    assert now == stored
