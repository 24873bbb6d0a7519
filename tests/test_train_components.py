"""Training components: the Trainer iterates them for updates, the warm-up undo and checkpoints; the
weights to export come from them; switches flip once and follow a restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers_train import CPU, one_thread, tiny_cfg, write_random_shards  # noqa: F401  (one_thread: autouse)
from pgolf.components import Component, Disabled, StepEvent, SwitchAtThreshold
from pgolf.config import RunConfig
from pgolf.runlog import RunLogger
from pgolf.train import Trainer, train



@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_shards(tmp_path_factory.mktemp("shards"))


class Recorder(Component):
    """Remembers every event and sums the weights it saw (a stand-in for any weight statistic)."""

    name = "recorder"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.events: list[StepEvent] = []
        self.weight_sum = torch.zeros((), dtype=torch.float64)

    def update(self, event: StepEvent) -> None:
        self.events.append(event)
        self.weight_sum += sum(p.detach().double().sum() for p in self.model.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"steps": [e.step for e in self.events], "weight_sum": self.weight_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = [e for e in self.events if e.step in state["steps"]][: len(state["steps"])]
        self.weight_sum = state["weight_sum"].clone()


def test_warmup_steps_do_not_leak_into_component_state(shard_dir: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=3, warmup=2)
    trainer = Trainer(cfg, CPU)
    recorder = Recorder(trainer.model)
    trainer.add_component(recorder)
    train(cfg, CPU, RunLogger(None, echo=False), trainer=trainer)
    assert [e.step for e in recorder.events] == [1, 2, 3]
    # The same run without warm-up steps saw exactly the same weights.
    cfg0 = tiny_cfg(shard_dir, iterations=3, warmup=0)
    trainer0 = Trainer(cfg0, CPU)
    recorder0 = Recorder(trainer0.model)
    trainer0.add_component(recorder0)
    train(cfg0, CPU, RunLogger(None, echo=False), trainer=trainer0)
    assert torch.equal(recorder.weight_sum, recorder0.weight_sum)
    assert [e.lr_mul for e in recorder.events] == [1.0, 1.0, 0.5]  # warmdown over the last 2 of 3 steps
    assert all(0.0 <= e.frac <= 1.0 for e in recorder.events)


def test_snapshot_restore_covers_rng_and_loader(shard_dir: Path) -> None:
    trainer = Trainer(tiny_cfg(shard_dir), CPU)
    snap = trainer.snapshot()
    before = (torch.rand(3), np.random.rand(2), trainer.loader.next_batch(trainer.micro_tokens, 32)[0])
    trainer.restore(snap)
    after = (torch.rand(3), np.random.rand(2), trainer.loader.next_batch(trainer.micro_tokens, 32)[0])
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


def test_component_names_are_unique(shard_dir: Path) -> None:
    trainer = Trainer(tiny_cfg(shard_dir), CPU)
    trainer.add_component(Disabled("extra"))
    with pytest.raises(ValueError, match="extra"):
        trainer.add_component(Disabled("extra"))


def event(step: int, lr_mul: float = 1.0, frac: float = 0.0, warmdown_mul: float = 1.0) -> StepEvent:
    return StepEvent(step=step, lr_mul=lr_mul, warmdown_mul=warmdown_mul, frac=frac, elapsed_s=0.0)


def test_switch_fires_once_and_follows_restores() -> None:
    calls: list[bool] = []
    switch = SwitchAtThreshold("looping", calls.append, at_frac=0.5)
    switch.update(event(1, frac=0.2))
    saved = switch.state_dict()
    switch.update(event(2, frac=0.5))
    switch.update(event(3, frac=0.7))
    assert calls == [True] and switch.state_dict() == {"fired": True, "fired_at_step": 2}
    fired = switch.state_dict()
    switch.load_state_dict(saved)  # e.g. the warm-up undo: the model goes back to the old path
    assert calls == [True, False] and not switch.fired
    switch.load_state_dict(fired)  # e.g. a resume after the switch: the model takes the new path again
    assert calls == [True, False, True]
    by_lr = SwitchAtThreshold("qat", calls.append, below_lr_mul=0.15)
    by_lr.update(event(1, lr_mul=0.2))
    by_lr.update(event(2, lr_mul=0.1))
    assert by_lr.fired_at_step == 2
    with pytest.raises(ValueError):
        SwitchAtThreshold("bad", calls.append)


class Snapshots(Component):
    """Records the weights (and the gradients) after every step, for reference computations."""

    name = "snapshots"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.weights: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.events: list[StepEvent] = []

    def update(self, event: StepEvent) -> None:
        self.events.append(event)
        self.weights.append({n: p.detach().double().clone() for n, p in self.model.named_parameters()})
        self.grads.append({n: p.grad.detach().double().clone() for n, p in self.model.named_parameters()})

    def state_dict(self) -> dict[str, Any]:
        return {"n": len(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del self.events[state["n"]:], self.weights[state["n"]:], self.grads[state["n"]:]


def run_with_snapshots(cfg: RunConfig) -> tuple[Any, Snapshots, dict[str, torch.Tensor]]:
    trainer = Trainer(cfg, CPU)
    initial = {n: p.detach().double().clone() for n, p in trainer.model.named_parameters()}
    snaps = Snapshots(trainer.model)
    trainer.add_component(snaps)
    result = train(cfg, CPU, RunLogger(None, echo=False), trainer=trainer)
    return result, snaps, initial


def test_ema_equals_reference_and_is_exported(shard_dir: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=5, warmup=2)
    cfg.train.ema_decay = 0.8
    result, snaps, initial = run_with_snapshots(cfg)
    assert result.export_source == "ema" and result.live_model is not result.model
    reference = dict(initial)
    for weights in snaps.weights:
        reference = {n: 0.8 * reference[n] + 0.2 * weights[n] for n in reference}
    exported = result.model.state_dict()
    for name, value in reference.items():
        torch.testing.assert_close(exported[name].double(), value, rtol=1e-5, atol=1e-7)
    live = dict(result.live_model.named_parameters())
    assert all(torch.equal(live[n].detach().double(), snaps.weights[-1][n]) for n in live)
    # The warm-up steps did not leak into the average: a run without them exports the same bits.
    cfg0 = tiny_cfg(shard_dir, iterations=5, warmup=0)
    cfg0.train.ema_decay = 0.8
    result0 = train(cfg0, CPU, RunLogger(None, echo=False))
    assert all(torch.equal(v, result0.model.state_dict()[k]) for k, v in exported.items())


def test_swa_averages_the_tail_and_ema_wins_when_both_are_on(shard_dir: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=8, warmup=1)
    cfg.train.warmdown_iters, cfg.train.swa_every, cfg.train.swa_lr_threshold = 6, 2, 0.6
    result, snaps, _ = run_with_snapshots(cfg)
    assert result.export_source == "swa"
    taken = [w for e, w in zip(snaps.events, snaps.weights) if e.lr_mul < 0.6 and e.step % 2 == 0]
    assert len(taken) == 2  # lr_mul 3/6, 2/6, 1/6 on steps 6..8 -> steps 6 and 8
    exported = result.model.state_dict()
    for name in taken[0]:
        torch.testing.assert_close(exported[name].double(), sum(w[name] for w in taken) / len(taken))
    cfg.train.ema_decay = 0.9
    assert train(cfg, CPU, RunLogger(None, echo=False)).export_source == "ema"


def test_swa_without_samples_exports_the_live_weights(shard_dir: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=3, warmup=0)
    cfg.train.swa_every, cfg.train.swa_lr_threshold, cfg.train.warmdown_iters = 1, 0.01, 1
    result = train(cfg, CPU, RunLogger(None, echo=False))
    assert result.export_source == "live" and result.model is result.live_model


def test_sensitivity_is_the_mean_squared_gradient_over_the_warmdown_tail(shard_dir: Path) -> None:
    cfg = tiny_cfg(shard_dir, iterations=6, warmup=1)
    cfg.train.warmdown_iters, cfg.train.sensitivity_frac = 4, 0.5
    result, snaps, _ = run_with_snapshots(cfg)
    tail = [g for e, g in zip(snaps.events, snaps.grads) if e.warmdown_mul <= 0.5]
    assert len(tail) == 2  # warm-down factors 1, 3/4, 2/4, 1/4 on steps 3..6
    assert result.sensitivity is not None and set(result.sensitivity) == set(tail[0])
    for name, value in result.sensitivity.items():
        expected = sum(g[name].square().mean().item() for g in tail) / len(tail)
        assert value == pytest.approx(expected, rel=1e-5)
    assert train(tiny_cfg(shard_dir), CPU, RunLogger(None, echo=False)).sensitivity is None



def test_depth_recurrence_switches_on_at_its_fraction_with_both_plans_warmed(shard_dir: Path) -> None:
    """The looped plan trains only from model.loop_enable_frac on; the warm-up runs both plans (so both
    compiled graphs exist before the clock starts) and is undone, looping off again."""
    import dataclasses

    cfg = tiny_cfg(shard_dir, iterations=6, warmup=2)
    cfg.model = dataclasses.replace(cfg.model, num_layers=3, num_loops=1, loop_start=1, loop_end=1,
                                    loop_enable_frac=0.5)
    cfg.validate()
    trainer = Trainer(cfg, CPU)
    assert trainer.model.looping is False
    seen: list[bool] = []
    original = trainer.model.hidden_states

    def spy(ids: torch.Tensor) -> torch.Tensor:
        seen.append(trainer.model.looping)
        return original(ids)

    trainer.model.hidden_states = spy  # type: ignore[method-assign]
    micro = cfg.train.grad_accum_steps
    result = train(cfg, CPU, RunLogger(None, echo=False), trainer=trainer)
    assert result.steps == 6
    warm, steps = seen[:2 * micro], seen[2 * micro:]
    assert warm == [False] * micro + [True] * micro
    # The switch sees each step's progress (steps done / iterations) after that step's update: step 4
    # starts at 3/6 = 0.5, fires the switch, and the steps after it run looped.
    assert steps == [False] * (4 * micro) + [True] * (2 * micro)
    assert trainer.model.looping is True


@pytest.mark.parametrize("compiled", [False, True])
def test_a_compiled_trainer_builds_its_rope_tables_before_the_first_step(shard_dir: Path, compiled: bool) -> None:
    # grown inside the first compiled step they would force a second compilation at the next one
    cfg = tiny_cfg(shard_dir)
    cfg.train.compile = compiled
    trainer = Trainer(cfg, CPU)
    lengths = {m.cos_cached.size(0) for m in trainer.model.modules() if hasattr(m, "cos_cached")}
    assert lengths == ({cfg.train.train_seq_len} if compiled else {0})
