"""Late QAT: the straight-through fake quantisation is the export's own rounding, its gradient is the
identity, and the switch really changes the forward pass once flipped — compiled too (a record's late QAT
was dead code because compilation folded its class-level flag into the graph)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pgolf.flags import apply_overrides
from pgolf.model.gpt import GPT
from pgolf.model.layers import CastedLinear
from pgolf.presets import get_preset
from pgolf.quant.intx import fake_quantize
from pgolf.quant.qat import qat_switch, qat_targets, straight_through


def qat_config(threshold: float = 0.5):
    cfg = get_preset("test-tiny")
    return apply_overrides(cfg, ["--quant.scheme", "intx", "--quant.matrix_bits", "4", "--quant.keep_float_max_numel",
                                 "0", "--train.qat_threshold", str(threshold)])


def test_straight_through_is_the_export_rounding_forward_and_identity_backward() -> None:
    cfg = qat_config()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    module, plan = next(iter(qat_targets(model, cfg).items()))
    w = module.weight.detach().clone().requires_grad_(True)
    out = straight_through(w, plan)
    assert torch.equal(out, fake_quantize(w.detach(), plan)) and not torch.equal(out, w)
    assert len(torch.unique(out[0])) <= 2**4  # int4: at most 16 levels per row
    (out * torch.arange(w.numel()).view_as(w)).sum().backward()
    assert torch.equal(w.grad, torch.arange(w.numel(), dtype=w.dtype).view_as(w))


def test_targets_are_the_integer_block_matrices_only() -> None:
    cfg = qat_config()
    model = GPT(cfg.model)
    targets = qat_targets(model, cfg)
    linears = [m for m in model.modules() if isinstance(m, CastedLinear) and m.role == "matrix"]
    assert set(targets) == set(linears) and all(p.bits == 4 for p in targets.values())


@pytest.mark.parametrize("compiled", [False, True])
def test_switching_on_changes_the_forward_pass_compiled_or_not(compiled: bool) -> None:
    cfg = qat_config()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randint(0, cfg.model.vocab_size, (2, 16))
    # Dynamo's guards are what the record's flag defeated; the eager backend runs them without codegen cost.
    run = torch.compile(model.forward_logits, backend="eager") if compiled else model.forward_logits
    switch = qat_switch(model, cfg)
    with torch.no_grad():
        plain = run(x)
        switch(True)
        quantised = run(x)
        switch(False)
        again = run(x)
    assert not torch.allclose(plain, quantised)
    assert torch.equal(plain, again)
    # The quantised forward is the model with its matrices replaced by their fake-quantised values.
    reference = GPT(cfg.model)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for module, plan in qat_targets(reference, cfg).items():
            module.weight.copy_(fake_quantize(module.weight, plan))
        assert torch.allclose(reference.forward_logits(x), quantised, atol=1e-6)


def test_training_switches_qat_on_below_the_threshold(tmp_path) -> None:
    from helpers_train import CPU, tiny_cfg, write_random_shards
    from pgolf.runlog import RunLogger
    from pgolf.train import Trainer, train

    cfg = tiny_cfg(write_random_shards(tmp_path), iterations=6, warmup=0)
    cfg.quant = dataclasses.replace(cfg.quant, scheme="intx", matrix_bits=4, keep_float_max_numel=0)
    cfg.train.qat_threshold, cfg.train.warmdown_iters = 0.5, 6  # lr_mul 1, 5/6, ... 1/6: below 0.5 from step 4
    cfg.validate()
    trainer = Trainer(cfg, CPU)
    linear = next(m for m in trainer.model.modules() if isinstance(m, CastedLinear) and m.role == "matrix")
    seen = []
    original = linear.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(linear.weight_transform is not None)
        return original(x)

    linear.forward = spy  # type: ignore[method-assign]
    result = train(cfg, CPU, RunLogger(None, echo=False), trainer=trainer)
    per_step = [seen[i] for i in range(0, len(seen), cfg.train.grad_accum_steps)]
    assert per_step[0] is False and per_step[-1] is True
    assert per_step == sorted(per_step)  # once on, it stays on
    # the model handed to calibration, the pre-quantisation score and the exporter is the full-precision one
    assert result.model is trainer.model and linear.weight_transform is None
    assert not any(getattr(m, "weight_transform", None) for m in result.model.modules())


def test_the_exported_average_has_no_fake_quantisation_either(tmp_path) -> None:
    from helpers_train import CPU, tiny_cfg, write_random_shards
    from pgolf.runlog import RunLogger
    from pgolf.train import Trainer, train

    cfg = tiny_cfg(write_random_shards(tmp_path), iterations=6, warmup=0)
    cfg.quant = dataclasses.replace(cfg.quant, scheme="intx", matrix_bits=4, keep_float_max_numel=0)
    cfg.train.qat_threshold, cfg.train.warmdown_iters, cfg.train.ema_decay = 0.5, 6, 0.9
    cfg.validate()
    trainer = Trainer(cfg, CPU)
    result = train(cfg, CPU, RunLogger(None, echo=False), trainer=trainer)
    assert result.export_source == "ema" and result.model is not trainer.model
    assert not any(getattr(m, "weight_transform", None) for m in result.model.modules())


@pytest.mark.parametrize("clip", ["percentile", "gptq_lite", "sdclip"])
def test_fake_quantize_compiles_whole_without_torch_quantile(clip: str) -> None:
    # torch.quantile under symbolic shapes failed a compiled late-QAT forward on CUDA with torch 2.11; the
    # compiled path must trace the fake quantisation in one graph, with no quantile call, and match eager.
    cfg = apply_overrides(qat_config(), ["--quant.matrix_clip", clip])
    plan = next(iter(qat_targets(GPT(cfg.model), cfg).values()))
    assert plan.clip == clip
    graphs: list[torch.fx.GraphModule] = []

    def recorder(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fake_quantize, backend=recorder, fullgraph=True, dynamic=True)
    for extra in (0, 3):  # two row counts under symbolic sizes, as automatic dynamic shapes make them
        rows = plan.shape[0] + extra
        here = dataclasses.replace(plan, shape=(rows, plan.shape[1]))
        w = torch.randn(rows, plan.shape[1], generator=torch.Generator().manual_seed(rows))
        assert torch.equal(compiled(w, here), fake_quantize(w, here))
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    assert graphs and not any("quantile" in t for t in targets), targets
