"""Record presets: written as differences from a baseline (`derive`), parameter counts equal to the records'
own logs, every switch their technique table names switched on, data paths following the vocabulary."""

from __future__ import annotations

import pytest
import torch

from pgolf.config import SECTIONS, config_to_dict
from pgolf.flags import apply_overrides, field_types
from pgolf.model.gpt import GPT, count_parameters
from pgolf.presets import PRESETS, baseline_8xh100, cpu_baseline, derive, get_preset
from pgolf.presets.techniques import RECORDS, TABLES, base_for, record_of, techniques_for

RECORD_PRESETS = ["record-332", "record-414", "record-609", "record-1992-legal"]
CPU_RECORD_PRESETS = ["cpu-record-332", "cpu-record-414", "cpu-record-609", "cpu-record-1992-legal"]

# model_params as printed in each record's seed log (openai/parameter-golf, records/track_10min_16mb/...)
LOGGED_PARAMS = {
    "baseline-8xh100": 17_059_912,  # 2026-03-17_NaiveBaseline
    "record-332": 27_618_913,  # 2026-03-21_12L_GradQuant_PartialRoPE_EMA/train_seed1337.log
    "record-414": 26_993_756,  # 2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233/train_seed1337.log
    "record-609": 26_993_756,  # 2026-03-24_XSA-all_FullGPTQ_ParallelMuon_1.1155/train_seed7.log
    "record-1992-legal": 35_989_592,  # 2026-04-30_SP8192_FullStack_HeadwiseGate_PreQuantTTT/train_seed42.log
}


def meta_params(cfg_model: object) -> int:
    with torch.device("meta"):
        return count_parameters(GPT(cfg_model))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(LOGGED_PARAMS))
def test_parameter_count_equals_the_records_log(name: str) -> None:
    assert meta_params(get_preset(name).model) == LOGGED_PARAMS[name]
    record = record_of(name)
    if record is not None:
        assert RECORDS[record].params == LOGGED_PARAMS[name]


def test_the_sp8192_base_is_35_94m() -> None:
    # PR #1394 (2026-04-05 SP8192 base, train_seed42.log: model_params 35943512): #1992's stack without the
    # headwise gate, with QK-gain 4.0, loop 4-5 from 50% and sequential residuals
    base = derive(get_preset("record-1992-legal"), name="sp8192-base",
                  model=dict(attn_gate="off", qk_gain_init=4.0, loop_start=4, loop_end=5, loop_enable_frac=0.5,
                             parallel_residual="off", parallel_from=0))
    assert meta_params(base.model) == 35_943_512


def test_derive_changes_only_what_it_names_and_validates() -> None:
    base = baseline_8xh100()
    before = config_to_dict(base)
    cfg = derive(base, name="x", model=dict(num_layers=11), train=dict(ema_decay=0.997))
    assert config_to_dict(base) == before  # the base is untouched
    assert cfg.model.num_layers == 11 and cfg.train.ema_decay == 0.997 and cfg.name == "x"
    diff = {(s, k) for s in SECTIONS for k, v in config_to_dict(getattr(cfg, s)).items()
            if v != config_to_dict(getattr(base, s))[k]}
    assert diff == {("model", "num_layers"), ("train", "ema_decay")}
    cfg.model.num_layers = 3  # the derived config shares no section with its base
    assert base.model.num_layers == 9


def test_derive_refuses_unknown_names_and_invalid_values() -> None:
    from pgolf.config import ConfigError

    with pytest.raises(ValueError, match="no field num_layer"):
        derive(baseline_8xh100(), name="x", model=dict(num_layer=11))
    with pytest.raises(ValueError, match="unknown section"):
        derive(baseline_8xh100(), name="x", modle=dict(num_layers=11))
    with pytest.raises(ConfigError, match="model.num_kv_heads"):
        derive(baseline_8xh100(), name="x", model=dict(num_kv_heads=3))


@pytest.mark.parametrize("name", RECORD_PRESETS + CPU_RECORD_PRESETS)
def test_record_presets_are_registered_and_complete(name: str) -> None:
    cfg = get_preset(name)
    assert name in PRESETS and cfg.name == name
    base = base_for(name)
    assert cfg.budget == base.budget and cfg.data.source == base.data.source
    assert cfg.train.max_wallclock_seconds == base.train.max_wallclock_seconds == 600.0
    assert cfg.budget.eval_seconds == 600.0


@pytest.mark.parametrize("name,dataset,tokenizer", [
    ("record-414", "data/datasets/fineweb10B_sp1024", "data/tokenizers/fineweb_1024_bpe.model"),
    ("record-1992-legal", "data/datasets/fineweb10B_sp8192", "data/tokenizers/fineweb_8192_bpe.model"),
    ("cpu-record-414", "data/datasets/embedded_sp1024", "data/tokenizers/embedded_1024_bpe.model"),
    ("cpu-record-1992-legal", "data/datasets/embedded_sp2048", "data/tokenizers/embedded_2048_bpe.model"),
])
def test_data_follows_the_record_vocabulary(name: str, dataset: str, tokenizer: str) -> None:
    cfg = get_preset(name)
    assert (cfg.dataset_dir, cfg.tokenizer_path) == (dataset, tokenizer)


def test_1992_legal_adapts_only_score_first() -> None:
    for name in ("record-1992-legal", "cpu-record-1992-legal"):
        cfg = get_preset(name)
        assert cfg.eval.ttt == "chunked"  # the score-first path; no pre-quantisation adaptation exists in pgolf
        rows = {t.name: t.state(cfg, base_for(name)) for t in techniques_for(name)}
        assert rows["pre-quantisation TTT: 21 epochs of AdamW on the validation text before GPTQ"] == "excluded"


def test_every_flag_a_technique_names_exists() -> None:
    for record, table in TABLES.items():
        for t in table:
            for flag in t.flags:
                section, name = flag.split(".", 1)
                assert section in SECTIONS and name in field_types(SECTIONS[section]), f"{record}: {flag}"
            assert (t.kind == "switch") == (t.check is not None), t.name


# Switches a preset leaves off on purpose (the row's note says why).
DELIBERATELY_OFF = {
    "record": {"tight SWA every 50 steps below LR scale 0.2"},
    "cpu": {"tight SWA every 50 steps below LR scale 0.2", "training sequences of 2048 (2x the baseline)",
            "786,432 tokens per step (1.5x the baseline)"},
}


@pytest.mark.parametrize("name", RECORD_PRESETS + CPU_RECORD_PRESETS)
def test_each_preset_switches_on_every_technique_of_its_table(name: str) -> None:
    cfg = get_preset(name)
    rows = [(t.state(cfg, base_for(name)), t) for t in techniques_for(name)]
    assert rows, "a record preset without a technique table"
    off = {t.name for state, t in rows if state == "off"}
    allowed = DELIBERATELY_OFF["cpu" if name.startswith("cpu-") else "record"]
    assert off <= allowed, off - allowed
    assert all(t.note for state, t in rows if state in ("off", "not built", "excluded"))


def test_a_switch_turned_off_by_a_flag_reads_off() -> None:
    cfg = apply_overrides(get_preset("record-414"), ["--model.xsa_last_n", "0", "--train.ema_decay", "0",
                                                     "--train.qat_threshold", "0"])
    states = {t.name: t.state(cfg, base_for("record-414")) for t in techniques_for("record-414")}
    assert states["XSA on the last 4 layers"] == "off"
    assert states["EMA of the weights every step, exported"] == "off"
    assert states["late QAT: int6 STE fake-quantisation once the LR scale falls below 0.15"] == "off"


def test_record_609_is_record_414_plus_its_switches() -> None:
    a, b = config_to_dict(get_preset("record-414")), config_to_dict(get_preset("record-609"))
    changed = {(s, k) for s in SECTIONS for k in a[s] if a[s][k] != b[s][k]}
    assert changed == {("model", "mlp_activation"), ("model", "xsa_last_n"), ("optim", "muon_sharded"),
                       ("optim", "muon_batched"), ("train", "calibration_reserve_seconds"), ("quant", "gptq"),
                       ("quant", "gptq_batches"), ("quant", "prune"), ("quant", "compressor"), ("quant", "level")}


def test_cpu_record_tuned_is_cpu_baseline_plus_its_changes() -> None:
    a, b = config_to_dict(cpu_baseline()), config_to_dict(get_preset("cpu-record-tuned"))
    changed = {(s, k) for s in SECTIONS for k in a[s] if a[s][k] != b[s][k]}
    assert changed == {("model", "mlp_activation"), ("train", "train_batch_tokens"), ("train", "grad_accum_steps"),
                       ("train", "warmdown_frac"), ("eval", "ttt"), ("eval", "ngram_order"), ("eval", "mix_unadapted"),
                       ("eval", "stride"), ("quant", "scheme"),
                       ("quant", "matrix_clip"), ("quant", "compressor"), ("quant", "allocate_bits"),
                       ("quant", "min_bits"), ("quant", "matrix_bits"), ("optim", "matrix_lr"), ("optim", "scalar_lr"),
                       ("optim", "tied_embed_lr"), ("optim", "muon_sharded"), ("optim", "muon_batched"),
                       ("optim", "muon_wd"), ("optim", "embed_wd"), ("optim", "adam_wd"),
                       ("optim", "muon_momentum"), ("optim", "beta1"), ("ttt", "lora_lr"), ("ttt", "lora_mix_lr"), ("ttt", "lora_mix_rank")}
    assert b["eval"]["ttt"] == "lora" and b["train"]["train_batch_tokens"] < a["train"]["train_batch_tokens"]
    assert b["optim"]["muon_momentum"] < a["optim"]["muon_momentum"] and b["train"]["warmdown_frac"] == 1.0
    assert b["optim"]["beta1"] < a["optim"]["beta1"]
    # the learning rates all scaled by one factor
    assert {round(b["optim"][k] / a["optim"][k], 6) for k in ("matrix_lr", "scalar_lr", "tied_embed_lr")} == {0.56}
    assert techniques_for("cpu-record-tuned") == ()  # not a record: no technique table to claim


def test_cpu_presets_derive_from_cpu_baseline() -> None:
    base = config_to_dict(cpu_baseline())
    for name in CPU_RECORD_PRESETS:
        cfg = config_to_dict(get_preset(name))
        # what every CPU-track run shares: the corpus preparation, the budget, the evaluation batch
        for section in ("prepare", "budget", "data"):
            assert cfg[section] == base[section], (name, section)
        assert cfg["model"]["model_dim"] == 128 and cfg["model"]["num_heads"] == 4
