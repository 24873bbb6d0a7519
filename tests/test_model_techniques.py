"""Every model technique on a tiny config: causality (alone and all together), document isolation
where it is claimed, the initial function unchanged where the record's zero init says so, depth
recurrence switching, the parallel-residual forms, gradients, roles and the record's parameter count."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from model_helpers import ALL_ON, TECHNIQUES, V, build, randomize, tiny, tokens, without

from pgolf.config import ModelConfig, OptimConfig
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.roles import ROLES, param_roles
from pgolf.optim.groups import build_optimizers
from pgolf.tokenizer import BOS_ID


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_future_tokens_never_change_earlier_logits(name: str) -> None:
    model = randomize(build(TECHNIQUES[name]))
    x = tokens(2, 24, seed=1)
    x[0, 5] = BOS_ID  # documents in the batch, so BOS handling is exercised as well
    x2 = x.clone()
    x2[:, 15:] = tokens(2, 9, seed=2)
    a, b = model.forward_logits(x), model.forward_logits(x2)
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 15:], b[:, 15:], atol=1e-4)


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_last_layer_on_the_scored_columns_only_gives_the_same_hidden_states(name: str) -> None:
    # Sliding evaluation runs the last layer only for a window's scored columns (hidden_states' keep_from);
    # every earlier position still feeds its keys and values, so the kept rows must not change.
    for backend in ("sdpa", "math"):
        model = randomize(build(TECHNIQUES[name], backend=backend))
        x = tokens(2, 24, seed=5)
        x[1, 11] = BOS_ID  # a document starting inside the dropped columns' range ...
        x[0, 20] = BOS_ID  # ... and one inside the kept ones
        with torch.inference_mode():
            full = model.hidden_states(x)  # (B, T, C)
            for keep_from in (0, 1, 17, 23):
                part = model.hidden_states(x, keep_from=keep_from)  # (B, T - keep_from, C)
                assert part.shape == (2, 24 - keep_from, full.size(-1))
                assert torch.allclose(part, full[:, keep_from:], atol=2e-5, rtol=0), (backend, keep_from)


def packed_documents() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of [doc A | BOS doc B]; the second copy differs only inside doc A."""
    x = tokens(2, 24, seed=3)
    x[:, 9] = BOS_ID
    x2 = x.clone()
    x2[:, 1:9] = tokens(2, 8, seed=4)
    return x, x2


ISOLATED = {
    "doc_mask": tiny(doc_mask=True),
    "doc_mask_smear_v1": tiny(doc_mask=True, smear_gate="v1"),
    "doc_mask_smear_v2": tiny(doc_mask=True, smear_gate="v2"),
    "all_but_bigram": without(ALL_ON, bigram_buckets=0, bigram_trigram=False),
}


@pytest.mark.parametrize("name", list(ISOLATED))
def test_an_earlier_document_never_changes_a_later_one(name: str) -> None:
    model = randomize(build(ISOLATED[name]))
    x, x2 = packed_documents()
    a, b = model.forward_logits(x), model.forward_logits(x2)
    assert torch.allclose(a[:, 9:], b[:, 9:], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, :9], b[:, :9], atol=1e-4)


@pytest.mark.parametrize("cfg", [tiny(), tiny(smear_gate="v2"), tiny(doc_mask=True, bigram_buckets=37, bigram_dim=16)],
                         ids=["plain", "smear_without_mask", "bigram"])
def test_isolation_fails_without_it(cfg: ModelConfig) -> None:
    # Attention without the mask, and the bigram hash at a BOS (it reads the previous token), do cross.
    model = randomize(build(cfg))
    x, x2 = packed_documents()
    assert not torch.allclose(model.forward_logits(x)[:, 9:], model.forward_logits(x2)[:, 9:], atol=1e-4)


def test_smear_v2_alone_keeps_documents_apart_at_the_input() -> None:
    model = randomize(build(tiny(smear_gate="v2")))
    x, x2 = packed_documents()
    from pgolf.model.embeddings import embed_input

    a = embed_input(x, model.tok_emb, None, model.smear)
    b = embed_input(x2, model.tok_emb, None, model.smear)
    assert torch.equal(a[:, 9:], b[:, 9:])


def test_a_document_scores_the_same_packed_or_alone() -> None:
    # Within its document a token sees exactly what it would see with the document alone (RoPE is relative).
    model = randomize(build(tiny(doc_mask=True, smear_gate="v2", xsa_last_n=1)), scale=0.1)
    x, _ = packed_documents()
    packed = model.forward_logits(x)[:, 9:]
    alone = model.forward_logits(x[:, 9:].contiguous())
    assert torch.allclose(packed, alone, atol=2e-5, rtol=0)


def shared_from(off: GPT, on: GPT) -> list[str]:
    """Load the technique-off model's parameters into the technique-on model; returns the keys left at init."""
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert not unexpected
    return missing


@pytest.mark.parametrize("overrides,new_params", [
    (dict(bigram_buckets=37, bigram_dim=16, bigram_trigram=True), {"bigram.table.weight", "bigram.proj.weight",
                                                                   "bigram.scale"}),
    (dict(value_embed_layers=(0, 2), value_embed_dim=8), {"value_embed.table.weight", "value_embed.proj.weight",
                                                          "value_embed.scale", "blocks.0.attn.ve_scale",
                                                          "blocks.2.attn.ve_scale"}),
    (dict(attn_gate="output"), {f"blocks.{i}.attn.gate.weight" for i in range(3)}),
    (dict(smear_gate="v2"), {"smear.gate_proj.weight", "smear.lam"}),
])
def test_zero_init_techniques_start_as_the_identity(overrides: dict[str, object], new_params: set[str]) -> None:
    # Shared parameters randomised (so every path carries signal) and copied across; the technique's own
    # parameters stay at their init, and the function must not change.
    off = randomize(build(tiny()))
    on = build(tiny(**overrides), seed=5)
    assert set(shared_from(off, on)) == new_params
    x = tokens(2, 20, seed=6)
    assert torch.equal(off.forward_logits(x), on.forward_logits(x))


@pytest.mark.parametrize("gate", ["sparse", "headwise"])
def test_halving_gates_leave_the_initial_model_unchanged_through_the_zero_projection(gate: str) -> None:
    # sigmoid(0) = 1/2 (sparse) or about 1/2 (headwise, std 0.01) halves each head, which the zero-init
    # output projection still maps to nothing: the model at init is the baseline's.
    off = build(tiny())
    on = build(tiny(attn_gate=gate), seed=5)
    shared_from(off, on)
    x = tokens(2, 20, seed=6)
    assert torch.equal(off.forward_logits(x), on.forward_logits(x))
    h = torch.randn(2, 5, 32)
    g = on.blocks[0].attn._gate(h)
    if gate == "sparse":
        assert torch.equal(g, torch.full((2, 5, 4), 0.5))
    else:
        assert torch.allclose(g, torch.sigmoid(h @ on.blocks[0].attn.gate.weight.T))


def test_skip_gates_start_as_an_even_mix() -> None:
    model = build(tiny(skip_gates=True))
    assert torch.equal(model.skip_gates, torch.zeros(1, 32))
    x, skip = torch.randn(1, 4, 32), torch.randn(1, 4, 32)
    with torch.no_grad():
        model.skip_weights.fill_(2.0)
    assert torch.allclose(model._merge_skip(x, skip, 0), 0.5 * x + 0.5 * 2.0 * skip, atol=1e-6)


def test_depth_recurrence_switch() -> None:
    cfg = tiny(num_layers=4, num_loops=2, loop_start=1, loop_end=2)
    model = randomize(build(cfg))
    assert model.looping  # built looped: a loaded artifact evaluates the full virtual plan
    assert [s.block for s in model.plan] == [0, 1, 2, 1, 2, 1, 2, 3]
    assert model.skip_weights.shape == (4, 32)
    x = tokens(1, 16, seed=7)
    looped = model.forward_logits(x)
    model.set_looping(False)
    assert [s.block for s in model.plan] == [0, 1, 2, 3] and model.num_encoder_layers == 2
    flat = model.forward_logits(x)
    assert not torch.allclose(looped, flat, atol=1e-4)
    # unlooped, the model is the plain 4-layer model using the first 2 skip rows
    plain = build(tiny(num_layers=4))
    state = {k: v for k, v in model.state_dict().items()}
    state["skip_weights"] = state["skip_weights"][:2]
    plain.load_state_dict(state)
    assert torch.equal(plain.forward_logits(x), flat)
    model.set_looping(True)
    assert torch.equal(model.forward_logits(x), looped)


def test_two_lanes_with_unit_mixing_equal_gptj_where_no_skip_enters() -> None:
    # 5 layers: encoder [0, 1], decoder [2, 3, 4]; block 4 merges no skip. With post = 1, resid = 1 and
    # resid_mix = (1, 0) both lanes get the same update, so their mean is GPT-J's x + attn + mlp.
    gptj = randomize(build(tiny(num_layers=5, parallel_residual="gptj", parallel_from=4)))
    with torch.no_grad():
        gptj.blocks[4].resid_mix.copy_(torch.stack((torch.ones(32), torch.zeros(32))))
    lanes = build(tiny(num_layers=5, parallel_residual="two_lane", parallel_from=4))
    lanes.load_state_dict(gptj.state_dict(), strict=False)
    with torch.no_grad():
        lanes.parallel_resid_lambdas.fill_(1.0)
    x = tokens(2, 16, seed=8)
    assert torch.allclose(gptj.forward_logits(x), lanes.forward_logits(x), atol=1e-5, rtol=0)
    with torch.no_grad():
        lanes.parallel_post_lambdas[4, 1, 0] = 0.0  # the MLP no longer writes lane0
    assert not torch.allclose(gptj.forward_logits(x), lanes.forward_logits(x), atol=1e-4)


def test_gptj_block_reads_one_normed_input() -> None:
    model = randomize(build(tiny(parallel_residual="gptj", parallel_from=0)))
    block, x, x0 = model.blocks[1], torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    mix = block.resid_mix
    x_in = mix[0] * x + mix[1] * x0
    n = torch.nn.functional.rms_norm(x_in, (32,))
    expected = x_in + block.attn_scale * block.attn(n) + block.mlp_scale * block.mlp(n)
    assert torch.allclose(block(x, x0), expected, atol=1e-6)


def test_every_parameter_trains_with_everything_on() -> None:
    model = randomize(build(ALL_ON), scale=0.1)
    x, y = tokens(2, 24, seed=9), tokens(2, 24, seed=10)
    x[:, 7] = BOS_ID
    loss = model(x, y)
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert abs(model(x, y).item() - loss.item()) < 0.2
    build_optimizers(model, OptimConfig())  # every parameter in exactly one optimiser group


def test_every_parameter_has_one_role_and_gates_and_tables_are_tagged() -> None:
    model = build(ALL_ON)
    roles = param_roles(model)
    assert list(roles) == [n for n, _ in model.named_parameters()] and set(roles.values()) <= set(ROLES)
    assert {n for n, r in roles.items() if r == "gate"} == {"smear.gate_proj.weight"} | {
        f"blocks.{i}.attn.gate.weight" for i in range(5)}
    assert {n for n, r in roles.items() if r == "table"} == {"bigram.table.weight", "value_embed.table.weight"}
    assert roles["bigram.proj.weight"] == roles["value_embed.proj.weight"] == "matrix"
    for name in ("bigram.scale", "smear.lam", "value_embed.scale", "blocks.1.attn.ve_scale", "skip_gates",
                 "parallel_post_lambdas", "parallel_resid_lambdas"):
        assert roles[name] == "control"
    for name in ("headwise", "output"):
        r = param_roles(build(tiny(attn_gate=name)))
        assert r["blocks.0.attn.gate.weight"] == "gate"
    assert param_roles(build(tiny(smear_gate="v1")))["smear.gate"] == "control"


def test_sp8192_base_record_parameter_count() -> None:
    # 2026-04-05 SP8192 base (PR #1394): 11L 512d 8H/4KV, MLP 4x, vocab 8192, tied, skip gates, XSA all,
    # partial RoPE 16, LN scale, loop 4-5 x2, QK gain 4.0. The record says 35.94M; exactly:
    # 8192*512 embedding + 11 * 2,885,640 per block + 2 * 7 * 512 skip weights and gates = 35,943,512.
    cfg = ModelConfig(vocab_size=8192, num_layers=11, mlp_mult=4.0, mlp_activation="leaky_relu2", skip_gates=True,
                      xsa_last_n=11, rope_dims=16, rope_train_seq_len=2048, ln_scale=True, num_loops=2, loop_start=4,
                      loop_end=5, qk_gain_init=4.0)
    n = count_parameters(GPT(cfg))
    assert n == 35_943_512
    assert round(n / 1e6, 2) == 35.94


def test_parameter_count_of_each_technique() -> None:
    base = count_parameters(build(tiny()))
    kv = 16
    expected = {
        "mlp_hidden_leaky": base + 2 * 3 * 32 * (40 - 64),
        "bigram_trigram": base + 37 * 16 + 16 * 32 + 1,
        "value_embed": base + V * 8 + 8 * kv + 1 + 2,
        "skip_gates": base + 32,
        "smear_v1": base + 32,
        "smear_v2": base + 12 + 1,
        "gate_headwise": base + 3 * 4 * 32,
        "gate_output": base + 3 * 4 * 12,
        "gate_sparse": base + 3 * 4 * 12,
        "parallel_two_lane": base + 3 * 4 + 3 * 2,
        "recurrence": base + 32,  # 5 virtual layers: 2 skip rows instead of 1
    }
    for name, count in expected.items():
        assert count_parameters(build(TECHNIQUES[name])) == count, name
    for name in ("partial_rope_ntk", "ln_scale", "xsa", "parallel_gptj", "doc_mask"):
        assert count_parameters(build(TECHNIQUES[name])) == base, name


def test_all_on_state_dict_roundtrips_through_a_fresh_model() -> None:
    a = randomize(build(ALL_ON))
    b = build(dataclasses.replace(ALL_ON), seed=3)
    b.load_state_dict(a.state_dict(), strict=True)
    x = tokens(1, 20, seed=11)
    assert torch.equal(a.forward_logits(x), b.forward_logits(x))


@pytest.mark.slow
def test_everything_on_compiles_without_graph_breaks() -> None:
    model = build(ALL_ON)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    x, y = tokens(2, 24, seed=12), tokens(2, 24, seed=13)
    x[:, 10] = BOS_ID
    loss = compiled(x, y)
    loss.backward()
    assert torch.allclose(loss, model(x, y), atol=1e-5)
