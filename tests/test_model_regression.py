"""The spec-driven GPT with the baseline config is the baseline: the same parameters (names, shapes,
order, and the same values from the same seed) and bit-identical fp32 logits against a frozen copy of
the pre-refactor model (`reference_baseline_gpt`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference_baseline_gpt import ReferenceGPT

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.roles import ROLES, param_roles

V = 64


def tiny(**overrides: object) -> ModelConfig:
    fields = dict(vocab_size=V, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2)
    fields.update(overrides)
    return ModelConfig(**fields)


def randomized_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state with noise on every tensor, so zero-init projections carry signal too."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = list(a.named_parameters()), list(b.named_parameters())
    assert [n for n, _ in pa] == [n for n, _ in pb]
    assert [p.shape for _, p in pa] == [p.shape for _, p in pb]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(pa, pb))


CONFIGS = {
    "tiny": tiny(),
    "one-layer": tiny(num_layers=1),
    "even": tiny(num_layers=4),
    "five-mqa": tiny(num_layers=5, num_kv_heads=1),
    "untied": tiny(tie_embeddings=False),
    "mha-wide-mlp": tiny(num_kv_heads=4, mlp_mult=3.0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_and_bit_identical_logits(name: str) -> None:
    cfg = CONFIGS[name]
    torch.manual_seed(7)
    ref = ReferenceGPT(cfg, attn_backend="sdpa")
    torch.manual_seed(7)
    new = GPT(dataclasses.replace(cfg), attn_backend="sdpa")
    same_parameters(ref, new)  # same seed -> same init, drawn in the same order
    state = randomized_state(ref, seed=1)
    ref.load_state_dict(state)
    new.load_state_dict(state)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, V, (2, 24), generator=g)
    y = torch.randint(0, V, (2, 24), generator=g)
    assert torch.equal(ref.forward_logits(x), new.forward_logits(x))
    assert torch.equal(ref.per_token_nll(x, y), new.per_token_nll(x, y))
    assert torch.equal(ref(x, y), new(x, y))


def test_math_backend_is_bit_identical_too() -> None:
    torch.manual_seed(0)
    ref = ReferenceGPT(tiny(), attn_backend="math")
    new = GPT(tiny(), attn_backend="math")
    state = randomized_state(ref, seed=3)
    ref.load_state_dict(state)
    new.load_state_dict(state)
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(4))
    assert torch.equal(ref.forward_logits(x), new.forward_logits(x))


def test_challenge_baseline_parameters_and_logits() -> None:
    torch.manual_seed(0)
    ref = ReferenceGPT(ModelConfig())
    torch.manual_seed(0)
    new = GPT(ModelConfig())
    assert count_parameters(new) == 17_059_912
    same_parameters(ref, new)
    x = torch.randint(0, 1024, (1, 16), generator=torch.Generator().manual_seed(5))
    assert torch.equal(ref.forward_logits(x), new.forward_logits(x))


def test_every_baseline_parameter_has_exactly_one_role() -> None:
    for cfg in CONFIGS.values():
        model = GPT(cfg)
        roles = param_roles(model)
        assert list(roles) == [n for n, _ in model.named_parameters()]
        assert set(roles.values()) <= set(ROLES)
