"""The compliance report and the separation of data: `pgolf eval` writes compliance.json and exits 1
when a budget is missed; the probe catches a model that peeks ahead or does not normalise; TTT code
outside the counted list is charged; training opens only training shards and evaluation only
validation shards."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers_text import TINY_VOCAB, make_documents
from test_ttt import one_thread  # noqa: F401  (an autouse fixture)

import pgolf
from pgolf.cli import main
from pgolf.config import (BudgetConfig, DataConfig, EvalConfig, ModelConfig, QuantConfig, RunConfig, TrainConfig,
                          TTTConfig)
from pgolf.data.shards import read_shard_header, shard_name, write_documents_as_shards
from pgolf.dist import DistInfo
from pgolf.eval.compliance import build_report, probe_model, train_ledger
from pgolf.model.gpt import GPT
from pgolf.quant.export import export_model
from pgolf.scoring import score_artifact
from pgolf.tokenizer import BOS_ID, encode_documents, load_tokenizer
from pgolf.train import Trainer

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def setup(tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    """Train and validation shards of generated text, and an artifact of an untrained tiny model."""
    root = tmp_path_factory.mktemp("compliance")
    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    for split, seed in (("train", 1), ("val", 2)):
        docs = encode_documents(sp, make_documents(15_000, seed=seed))
        write_documents_as_shards(root / "data", split, docs, bos_id=BOS_ID, shard_tokens=3_000)
    cfg = RunConfig(name="c", out_dir=str(root / "runs"),
                    model=ModelConfig(vocab_size=TINY_VOCAB, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1),
                    train=TrainConfig(train_batch_tokens=128, train_seq_len=32, grad_accum_steps=1, warmup_steps=0),
                    data=DataConfig(source="fineweb", dataset_dir=str(root / "data"),
                                    tokenizer_path=str(tiny_tokenizer)),
                    quant=QuantConfig(keep_float_max_numel=256),
                    eval=EvalConfig(seq_len=32, stride=16, batch_tokens=512, max_tokens=800),
                    ttt=TTTConfig(chunk_tokens=300, batch_seqs=4, lora_chunk=16, lora_batch_docs=4),
                    budget=BudgetConfig(artifact_max_bytes=1_000_000, train_seconds=60.0)).validate()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    art = root / "runs" / "model.ptz"
    export_model(model, cfg, art, code_bytes=5_000, extra_meta={"steps": 20, "stopped_by": "iterations"})
    # `pgolf eval` reads the training record from the run's summary beside the artifact
    (art.parent / "summary.json").write_text(json.dumps({"train_seconds": 12.5, "stopped_by": "iterations"}))
    return cfg, art


@pytest.mark.parametrize("mode", ["none", "chunked", "lora"])
def test_eval_writes_a_compliant_report(setup: tuple[RunConfig, Path], mode: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, art = setup
    tokens = 800 if mode == "none" else 320  # eval.max_tokens
    assert main(["eval", str(art), "--eval.ttt", mode, "--eval.max_tokens", str(tokens)]) == 0
    out = capsys.readouterr().out
    assert "compliance: COMPLIANT" in out and f"ttt {mode}" in out
    rep = json.loads(art.with_name("compliance.json").read_text())
    assert rep["compliant"] and rep["failures"] == [] and rep["evaluation"]["ttt"] == mode
    assert set(rep["conditions"]) == {"causal", "normalized", "score_before_update", "single_pass"}
    assert all(c["ok"] and c["guarantee"] for c in rep["conditions"].values())
    once = rep["conditions"]["single_pass"]["checked"]
    assert once["scored_exactly_once"] == once["predictions"] == rep["evaluation"]["tokens"] == tokens
    adapted = rep["conditions"]["score_before_update"]["checked"]["predictions_adapted_on"]
    assert (adapted == 0) == (mode == "none") and adapted < tokens
    assert rep["time"]["train_seconds"] == 12.5 and rep["time"]["train_ok"] and rep["time"]["eval_ok"]
    stage = {"none": "sliding", "chunked": "ttt_chunked", "lora": "ttt_lora"}[mode]
    assert set(k for k in rep["time"]["stages_seconds"] if "." not in k) == {"load", stage}
    b = rep["bytes"]
    assert b["total_bytes"] == b["code_bytes"] + b["model_bytes"]


def test_eval_with_the_ngram_cache_reports_its_checks(setup: tuple[RunConfig, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg, art = setup
    assert main(["eval", str(art), "--eval.ttt", "lora", "--eval.ngram_order", "4", "--eval.max_tokens", "320"]) == 0
    out = capsys.readouterr().out
    assert "compliance: COMPLIANT" in out and "n-gram cache too (0.0e+00)" in out
    assert "mixed with order-4 n-gram caches" in out and "(eval-time adaptation, counted after scoring)" in out
    rep = json.loads(art.with_name("compliance.json").read_text())
    c = rep["conditions"]
    assert c["causal"]["checked"]["cache_earlier_max_abs_change"] == 0.0
    assert c["normalized"]["checked"]["cache_sum_max_abs_error"] < 1e-9
    assert c["score_before_update"]["checked"]["ngram_order"] == 4
    assert "ttt_lora.ngram" in rep["time"]["stages_seconds"]
    # a sliding evaluation with the caches is not a fixed predictor, and the report does not call it one
    assert main(["eval", str(art), "--eval.ngram_order", "2", "--eval.max_tokens", "320"]) == 0
    out = capsys.readouterr().out
    assert "no weight adaptation (0 predictions released); mixed with order-2 n-gram caches" in out
    assert "fixed predictor" not in out


def test_eval_with_mixed_passes_reports_them_and_their_stages(setup: tuple[RunConfig, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg, art = setup
    assert main(["eval", str(art), "--eval.ttt", "lora", "--eval.mix_unadapted", "true", "--ttt.lora_mix_lr", "0.01",
                 "--eval.max_tokens", "320"]) == 0
    out = capsys.readouterr().out
    assert "compliance: COMPLIANT" in out
    assert "mixed with the unadapted model's scores and a second LoRA pass's (score-first too)" in out
    rep = json.loads(art.with_name("compliance.json").read_text())
    checked = rep["conditions"]["score_before_update"]["checked"]
    assert checked["unadapted_mixed"] and checked["second_lora_mixed"]
    assert {"load", "ttt_lora", "ttt_lora.unadapted", "ttt_lora.lora_mix"} <= set(rep["time"]["stages_seconds"])
    assert main(["eval", str(art), "--eval.ttt", "lora", "--eval.max_tokens", "320"]) == 0
    assert "mixed with" not in capsys.readouterr().out
    assert not json.loads(art.with_name("compliance.json").read_text())["conditions"]["score_before_update"][
        "checked"]["second_lora_mixed"]


def test_over_budget_evaluation_is_non_compliant(setup: tuple[RunConfig, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg, art = setup
    assert main(["eval", str(art), "--budget.eval_seconds", "0.000001", "--budget.train_seconds", "10",
                 "--eval.max_tokens", "200"]) == 1
    assert "NON-COMPLIANT" in capsys.readouterr().out
    rep = json.loads(art.with_name("compliance.json").read_text())
    assert not rep["compliant"] and not rep["time"]["eval_ok"] and rep["time"]["train_ok"] is False
    assert any("evaluation took" in f for f in rep["failures"]) and any("training took" in f for f in rep["failures"])
    scored = score_artifact(art, dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_tokens=200)), CPU)
    tight = dataclasses.replace(cfg, budget=BudgetConfig(artifact_max_bytes=scored.info.total_bytes - 1))
    over = build_report(tight, scored, probe_model(scored.model, TINY_VOCAB, 32, CPU.device), 1, None)
    assert not over["compliant"] and over["failures"] == [f"{scored.info.total_bytes:,} bytes, over the "
                                                          f"{scored.info.total_bytes - 1:,} byte budget"]
    assert over["time"]["train_ok"] is None  # unknown training time is reported, not assumed


def test_training_budget_allows_only_the_step_that_crosses_a_cap(setup: tuple[RunConfig, Path]) -> None:
    cfg, art = setup
    capped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_wallclock_seconds=60.0))
    assert train_ledger(capped, 59.0, False)["train_ok"]
    crossed = train_ledger(capped, 61.5, True)
    assert crossed["train_ok"] and crossed["train_overrun_seconds"] == pytest.approx(1.5)
    assert not train_ledger(capped, 61.5, False)["train_ok"]  # stopped by iterations, or interrupted, yet over
    assert not train_ledger(capped, 55.0, True, extra_seconds=6.5)["train_ok"]  # calibration after it gets no allowance
    loose = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_wallclock_seconds=90.0))
    assert not train_ledger(loose, 61.5, True)["train_ok"]  # a cap beyond the budget is no cap
    assert train_ledger(capped, None, None)["train_ok"] is None
    # `pgolf eval` reads how training stopped from the run's summary beside the artifact: by the cap
    model = GPT(cfg.model)
    other = art.parent / "capped" / "final_model.int8.ptz"
    export_model(model, capped, other, code_bytes=5_000, extra_meta={"steps": 3, "stopped_by": "wallclock"})
    (other.parent / "summary.json").write_text(json.dumps({"train_seconds": 61.5, "stopped_by": "wallclock"}))
    assert main(["eval", str(other), "--eval.max_tokens", "100"]) == 0
    rep = json.loads(other.with_name("compliance.json").read_text())
    assert rep["time"]["train_stopped_by_cap"] and rep["time"]["train_ok"] and rep["compliant"]


class PeekingGPT(GPT):
    """Mixes the next token's embedding into each position: a causality leak the probe must catch."""

    def hidden_states(self, input_ids: torch.Tensor, keep_from: int = 0) -> torch.Tensor:
        h = super().hidden_states(input_ids)  # (B, T, C)
        return (h + 0.5 * self.tok_emb(input_ids.roll(-1, dims=1)))[:, keep_from:]


class UnnormalisedGPT(GPT):
    """Scores only the realised token's logit, not a softmax over the vocabulary."""

    def per_token_nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        return -self.forward_logits(input_ids).gather(-1, target_ids[..., None])[..., 0]


def test_probe_catches_leaks_and_unnormalised_scores() -> None:
    cfg = ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1)
    torch.manual_seed(0)
    honest = probe_model(GPT(cfg), 64, 32, CPU.device)
    assert honest["causal_ok"] and honest["normalized_ok"] and honest["later_logits_max_abs_change"] > 0
    assert not probe_model(PeekingGPT(cfg), 64, 32, CPU.device)["causal_ok"]
    unnorm = probe_model(UnnormalisedGPT(cfg), 64, 32, CPU.device)
    assert unnorm["causal_ok"] and not unnorm["normalized_ok"]


def test_ttt_code_ships_in_the_bundle_of_a_config_that_uses_it() -> None:
    # The counted code is the bundle of the evaluated config: adapting at evaluation time ships (and pays
    # for) the adapter's module; a fixed predictor does not carry it.
    from pgolf.bundle import bundle_modules, code_bytes
    from pgolf.flags import apply_overrides
    from pgolf.presets import get_preset

    cfg = get_preset("test-tiny")
    for mode, module in (("chunked", "pgolf.eval.ttt"), ("lora", "pgolf.eval.lora")):
        adapting = apply_overrides(cfg, ["--eval.ttt", mode])
        assert module not in bundle_modules(cfg) and module in bundle_modules(adapting)
        assert code_bytes(adapting) > code_bytes(cfg)


@pytest.fixture
def opened_shards(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the shards opened from now on: every shard reader validates the header first."""
    import pgolf.data.loader  # noqa: F401  (bind it before patching)

    seen: list[str] = []

    def recording(path: str | Path) -> int:
        seen.append(Path(path).name)
        return read_shard_header(path)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("pgolf") and getattr(module, "read_shard_header", None) \
                is read_shard_header:
            monkeypatch.setattr(module, "read_shard_header", recording)
    return seen


def test_training_opens_only_training_shards(setup: tuple[RunConfig, Path], opened_shards: list[str]) -> None:
    cfg, _ = setup
    trainer = Trainer(cfg, CPU)
    for step in range(3):
        trainer.step(step, trainer.schedule(step, 0.0))
    assert opened_shards and all(name.startswith("fineweb_train_") for name in opened_shards)
    assert shard_name("val", 0) not in opened_shards


def test_training_code_never_names_the_validation_split() -> None:
    root = Path(pgolf.__file__).parent
    for rel in ("train.py", "data/loader.py"):
        constants = {n.value for n in ast.walk(ast.parse((root / rel).read_text())) if isinstance(n, ast.Constant)}
        assert "val" not in constants, rel


def test_evaluation_opens_only_validation_shards(setup: tuple[RunConfig, Path], opened_shards: list[str]) -> None:
    cfg, art = setup
    score_artifact(art, cfg, CPU)
    assert opened_shards and all(name.startswith("fineweb_val_") for name in opened_shards)
