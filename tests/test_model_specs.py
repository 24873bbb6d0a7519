"""The per-layer plan: virtual orders under depth recurrence (the records' own examples), the
encoder/decoder split, which skip each decoder layer pops, per-block settings by physical index,
and the config checks that keep a plan well formed."""

from __future__ import annotations

import dataclasses

import pytest

from pgolf.config import ConfigError, ModelConfig, RunConfig
from pgolf.flags import apply_overrides
from pgolf.model.specs import layer_specs, num_skip_weights, virtual_order


def eleven(**overrides: object) -> ModelConfig:
    return dataclasses.replace(ModelConfig(num_layers=11), **overrides)


def split(cfg: ModelConfig, looping: bool = True) -> tuple[list[int], list[int]]:
    specs = layer_specs(cfg, looping)
    return ([s.block for s in specs if s.side == "encoder"], [s.block for s in specs if s.side == "decoder"])


def test_sp8192_base_loop_4_5_twice() -> None:
    cfg = eleven(num_loops=2, loop_start=4, loop_end=5)
    assert virtual_order(cfg, looping=True) == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    assert split(cfg) == ([0, 1, 2, 3, 4, 5, 4], [5, 4, 5, 6, 7, 8, 9, 10])
    assert num_skip_weights(cfg) == 7


def test_pr1493_loop_3_5_twice() -> None:
    cfg = eleven(num_loops=2, loop_start=3, loop_end=5)
    assert len(virtual_order(cfg, looping=True)) == 17 == cfg.num_virtual_layers
    assert split(cfg) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])


def test_unlooped_plan_is_the_baseline_split_and_uses_a_prefix_of_the_skips() -> None:
    cfg = eleven(num_loops=2, loop_start=4, loop_end=5)
    assert split(cfg, looping=False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    dec = [s for s in layer_specs(cfg, looping=False) if s.side == "decoder"]
    assert [s.skip_index for s in dec] == [0, 1, 2, 3, 4, -1]  # 5 of the 7 skip rows
    assert [s.skip_source for s in dec] == [4, 3, 2, 1, 0, -1]  # last pushed, first popped


def test_skips_pop_in_reverse_push_order_under_recurrence() -> None:
    specs = layer_specs(eleven(num_loops=2, loop_start=4, loop_end=5), looping=True)
    dec = [s for s in specs if s.side == "decoder"]
    assert [s.skip_index for s in dec] == [0, 1, 2, 3, 4, 5, 6, -1]
    assert [s.skip_source for s in dec] == [6, 5, 4, 3, 2, 1, 0, -1]
    assert [s.position for s in specs] == list(range(15))


@pytest.mark.parametrize("num_layers", [1, 2, 5, 9])
def test_baseline_plan(num_layers: int) -> None:
    specs = layer_specs(ModelConfig(num_layers=num_layers), looping=True)
    assert [s.block for s in specs] == list(range(num_layers))
    assert sum(s.side == "encoder" for s in specs) == num_layers // 2
    assert all(s.ln_scale == 1.0 and not s.xsa and not s.value_embed for s in specs)
    assert all(s.residual == "sequential" and s.attn_gate == "off" for s in specs)


def test_per_block_settings_follow_the_physical_index() -> None:
    cfg = eleven(num_loops=2, loop_start=4, loop_end=5, xsa_last_n=4, ln_scale=True, value_embed_layers=(4, 9),
                 parallel_residual="gptj", parallel_from=5, attn_gate="sparse")
    for s in layer_specs(cfg, looping=True):
        assert s.ln_scale == pytest.approx(1.0 / (s.block + 1) ** 0.5)
        assert s.xsa == (s.block >= 7)
        assert s.value_embed == (s.block in (4, 9))
        assert s.residual == ("gptj" if s.block >= 5 else "sequential")
        assert s.attn_gate == "sparse"
    assert all(s.xsa for s in layer_specs(eleven(xsa_last_n=11), looping=True))
    assert all(s.xsa for s in layer_specs(eleven(xsa_last_n=50), looping=True))


def test_two_lanes_open_in_the_decoder_and_run_to_the_end() -> None:
    cfg = eleven(num_loops=2, loop_start=3, loop_end=5, parallel_residual="two_lane", parallel_from=8)
    modes = [(s.block, s.residual) for s in layer_specs(cfg, looping=True)]
    assert [b for b, m in modes if m == "two_lane"] == [8, 9, 10]
    early = eleven(parallel_residual="two_lane", parallel_from=2)  # encoder blocks 2-4 stay sequential
    assert [s.block for s in layer_specs(early, looping=True) if s.residual == "two_lane"] == [5, 6, 7, 8, 9, 10]
    loop_after = eleven(num_loops=1, loop_start=3, loop_end=5, parallel_residual="two_lane", parallel_from=3)
    lanes = [s.residual == "two_lane" for s in layer_specs(loop_after, looping=True)]
    assert lanes == sorted(lanes) and any(lanes)


@pytest.mark.parametrize("overrides,flag", [
    (dict(num_loops=1, loop_start=5, loop_end=4), "model.loop_start"),
    (dict(num_loops=1, loop_start=0, loop_end=11), "model.loop_end"),
    (dict(num_loops=-1), "model.num_loops"),
    (dict(loop_enable_frac=1.5), "model.loop_enable_frac"),
    (dict(parallel_residual="two_lane", parallel_from=5, num_loops=2, loop_start=3, loop_end=5), "model.parallel_from"),
    (dict(parallel_from=11), "model.parallel_from"),
    (dict(rope_dims=7), "model.rope_dims"),
    (dict(rope_dims=128), "model.rope_dims"),
    (dict(rope_dims=2, rope_train_seq_len=1024), "model.rope_train_seq_len"),
    (dict(xsa_last_n=-1), "model.xsa_last_n"),
    (dict(bigram_buckets=1), "model.bigram_buckets"),
    (dict(bigram_trigram=True), "model.bigram_trigram"),
    (dict(value_embed_layers=(3, 3)), "model.value_embed_layers"),
    (dict(value_embed_layers=(11,)), "model.value_embed_layers"),
    (dict(attn_gate_window=0), "model.attn_gate_window"),
    (dict(smear_gate_window=513), "model.smear_gate_window"),
    (dict(mlp_hidden=-4), "model.mlp_hidden"),
])
def test_config_mistakes_name_the_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        eleven(**overrides).validate()


def test_technique_flags_parse_from_the_command_line() -> None:
    cfg = apply_overrides(RunConfig(), ["--model.num_layers", "11", "--model.value_embed_layers", "9,10",
                                        "--model.attn_gate", "sparse", "--model.num_loops", "2",
                                        "--model.ortho_init", "true"])
    assert cfg.model.value_embed_layers == (9, 10)
    assert (cfg.model.attn_gate, cfg.model.num_loops, cfg.model.ortho_init) == ("sparse", 2, True)
    with pytest.raises(ConfigError, match="model.smear_gate"):
        apply_overrides(RunConfig(), ["--model.smear_gate", "v3"])


def test_tuple_field_survives_the_stored_config_roundtrip() -> None:
    import json

    from pgolf.config import config_to_dict, model_config_from_dict

    cfg = eleven(value_embed_layers=(9, 10))
    stored = json.loads(json.dumps(config_to_dict(cfg)))
    assert stored == config_to_dict(cfg) and stored["value_embed_layers"] == [9, 10]
    assert model_config_from_dict(stored) == cfg
