"""The baseline GPT: exact parameter count, shapes, near-uniform loss at init, causality, backend
agreement, GQA, per-token nll, a few optimiser steps learn, bf16 autocast, torch.compile, init."""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from pgolf.config import ModelConfig, OptimConfig
from pgolf.model.attention import attend
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.roles import ROLES, param_roles
from pgolf.optim.groups import build_optimizers

V = 64


def tiny(**overrides: object) -> ModelConfig:
    fields = dict(vocab_size=V, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2)
    fields.update(overrides)
    return ModelConfig(**fields)


def batch(B: int = 2, T: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def randomize(model: GPT, seed: int = 0) -> GPT:
    """Give every parameter (zero-init projections too) non-trivial values so attention matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_baseline_parameter_count_matches_the_challenge() -> None:
    assert count_parameters(GPT(ModelConfig())) == 17_059_912


def test_parameter_names_follow_the_baseline() -> None:
    names = {n for n, _ in GPT(tiny()).named_parameters()}
    for expected in ["tok_emb.weight", "skip_weights", "blocks.0.attn.c_q.weight", "blocks.0.attn.c_k.weight",
                     "blocks.0.attn.c_v.weight", "blocks.0.attn.proj.weight", "blocks.0.attn.q_gain",
                     "blocks.0.attn_scale", "blocks.0.mlp_scale", "blocks.0.resid_mix",
                     "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"]:
        assert expected in names
    assert "lm_head.weight" not in names
    assert all(p.dtype == torch.float32 for p in GPT(tiny()).parameters())
    assert not any("rotary" in k for k in GPT(tiny()).state_dict())  # cos/sin caches are not persistent


def test_every_parameter_has_exactly_one_role_read_from_structure() -> None:
    model = GPT(tiny())
    roles = param_roles(model)
    assert list(roles) == [name for name, _ in model.named_parameters()]
    assert set(roles.values()) <= set(ROLES)
    # The baseline's control tensors (its CONTROL_TENSOR_NAME_PATTERNS) are exactly the loose parameters.
    controls = {n for n, r in roles.items() if r == "control"}
    patterns = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")
    assert controls == {n for n in roles if any(p in n for p in patterns)}
    assert roles["tok_emb.weight"] == "embedding" and roles["blocks.0.attn.c_q.weight"] == "matrix"
    untied = param_roles(GPT(dataclasses.replace(tiny(), tie_embeddings=False)))
    assert untied["lm_head.weight"] == "head"


def test_a_new_loose_parameter_is_a_control_and_an_untagged_layer_is_refused() -> None:
    model = GPT(tiny())
    model.blocks[0].new_gate = torch.nn.Parameter(torch.zeros(4))
    assert param_roles(model)["blocks.0.new_gate"] == "control"
    model.blocks[0].odd = torch.nn.Embedding(3, 4)  # an embedding constructed without a role
    with pytest.raises(ValueError, match="blocks.0.odd.weight"):
        param_roles(model)


def test_output_shapes_and_dtypes() -> None:
    model = GPT(tiny())
    x, y = batch()
    logits = model.forward_logits(x)
    assert logits.shape == (2, 16, V) and logits.dtype == torch.float32
    assert logits.abs().max() <= model.cfg.logit_softcap
    loss = model(x, y)
    assert loss.shape == () and loss.dtype == torch.float32
    nll = model.per_token_nll(x, y)
    assert nll.shape == (2, 16) and nll.dtype == torch.float32


def test_loss_at_init_is_near_uniform() -> None:
    torch.manual_seed(0)
    x, y = batch(4, 32)
    assert abs(GPT(tiny())(x, y).item() - math.log(V)) < 0.05


def test_init_values() -> None:
    model = GPT(tiny())
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.proj.weight) == 0
        assert torch.count_nonzero(block.mlp.proj.weight) == 0
        assert torch.equal(block.resid_mix, torch.stack((torch.ones(32), torch.zeros(32))))
        assert torch.equal(block.attn.q_gain, torch.full((4,), 1.5))
    assert torch.equal(model.skip_weights, torch.ones(1, 32))
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 0.001


def test_future_tokens_do_not_change_earlier_logits() -> None:
    model = randomize(GPT(tiny()))
    x, _ = batch(1, 16)
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % V
    a, b = model.forward_logits(x), model.forward_logits(x2)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_math_and_sdpa_backends_agree(num_kv_heads: int) -> None:
    cfg = tiny(num_kv_heads=num_kv_heads)
    torch.manual_seed(0)
    math_model = randomize(GPT(cfg, attn_backend="math"))
    sdpa_model = GPT(cfg, attn_backend="sdpa")
    sdpa_model.load_state_dict(math_model.state_dict())
    x, y = batch()
    assert torch.allclose(math_model.forward_logits(x), sdpa_model.forward_logits(x), atol=1e-4)
    assert abs(math_model(x, y).item() - sdpa_model(x, y).item()) < 1e-5


def test_attend_backends_agree_on_raw_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 9, 8, generator=g)  # (B, H, T, D)
    k, v = torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 9, 8, generator=g)  # (B, KV, T, D)
    ref = attend(q, k, v, "math")
    assert torch.allclose(ref, attend(q, k, v, "sdpa"), atol=1e-5)
    assert torch.allclose(ref, attend(q, k, v, "auto"), atol=1e-5)
    assert torch.allclose(ref[:, :, 0], v[:, [0, 0, 1, 1, 2, 2], 0], atol=1e-6)  # first position sees itself only


def test_unknown_or_unavailable_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="attn_backend"):
        GPT(tiny(), attn_backend="xformers")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash"):
            GPT(tiny(), attn_backend="flash")


def test_per_token_nll_mean_equals_forward_loss() -> None:
    model = randomize(GPT(tiny()))
    x, y = batch()
    nll = model.per_token_nll(x, y)
    assert torch.allclose(nll.mean(), model(x, y), atol=1e-6)
    with torch.inference_mode():  # how the evaluator calls it
        assert torch.allclose(model.per_token_nll(x, y), nll.detach(), atol=1e-6)


def test_bf16_autocast_forward_backward() -> None:
    model = randomize(GPT(tiny()))
    x, y = batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = model(x, y)
        logits = model.forward_logits(x)
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32
    assert abs(loss.item() - model(x, y).item()) < 0.1
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_rotary_cache_built_in_inference_mode_still_trains() -> None:
    model = GPT(tiny())
    x, y = batch(1, 40)
    with torch.inference_mode():
        model.per_token_nll(x, y)
    model(x, y).backward()  # the (longer) table made under inference mode must be saveable for backward


def test_compiles_without_graph_breaks() -> None:
    model = GPT(tiny())
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    x, y = batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = compiled(x, y)
    loss.backward()
    assert abs(loss.item() - math.log(V)) < 0.2


@pytest.mark.parametrize("grown", [False, True])
def test_rope_tables_grown_before_compiling_spare_a_second_graph(grown: bool) -> None:
    # A table grown inside the first compiled call fails a guard at the second: the trainer grows them first.
    graphs: list[int] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN202
        graphs.append(len(example_inputs))
        return gm.forward

    model = GPT(tiny())
    x, y = batch()
    if grown:
        model.grow_rope(x.shape[1])
    compiled = torch.compile(model, dynamic=False, backend=counting_backend)
    for _ in range(2):
        compiled(x, y).backward()
    assert len(graphs) == (1 if grown else 2)


def test_a_few_optimiser_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = GPT(tiny())
    optimizers = build_optimizers(model, OptimConfig())
    x, y = batch(4, 32)
    losses = []
    for _ in range(8):
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize(("num_layers", "num_skips"), [(1, 0), (2, 1), (5, 2), (6, 3), (9, 4)])
def test_unet_skip_count(num_layers: int, num_skips: int) -> None:
    model = GPT(tiny(num_layers=num_layers))
    assert model.num_encoder_layers == num_layers // 2
    assert model.num_decoder_layers == num_layers - num_layers // 2
    assert model.skip_weights.shape == (num_skips, 32)
    x, y = batch()
    model(x, y).backward()


def test_untied_head() -> None:
    model = GPT(tiny(tie_embeddings=False))
    names = {n for n, _ in model.named_parameters()}
    assert "lm_head.weight" in names
    assert torch.count_nonzero(model.lm_head.weight) == 0
    assert count_parameters(model) == count_parameters(GPT(tiny())) + V * 32
    x, y = batch()
    assert abs(model(x, y).item() - math.log(V)) < 1e-5  # zero head: exactly uniform
    model(x, y).backward()
    assert model.lm_head.weight.grad is not None
