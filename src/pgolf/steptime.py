"""The step time of a config on this machine, for `pgolf inspect`: one untimed warm-up step, then a few
real optimiser steps (every training component updating) on random tokens, eager unless asked to
compile. A micro-batch larger than the probe is timed on fewer sequences and the forward/backward time
scaled linearly to the step; with depth recurrence both plans are timed. The steps that fit the
training budget follow."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pgolf.config import RunConfig
from pgolf.model.gpt import GPT

PROBE_TOKENS = 8_192  # tokens per timed micro-batch unless --probe-seqs says otherwise


@dataclass
class StepTiming:
    """Seconds per optimiser step on this machine and the steps that fit the training budget."""

    device: str
    bf16: bool
    compiled: bool
    timed_steps: int
    probe_seqs: int
    micro_seqs: int
    micro_batches: int
    """Micro-batches per step on one rank."""
    nproc: int
    """Data-parallel ranks the global batch is split over."""
    seq_len: int
    step_seconds: dict[str, float]
    """Seconds per full optimiser step, per plan ("one pass" / "looped", or "step")."""
    optimizer_seconds: dict[str, float]
    budget_seconds: float
    steps_in_budget: int


def _random_batch(seqs: int, seq_len: int, vocab: int, device: torch.device,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (seqs, seq_len + 1), generator=gen).to(device)  # (S, T+1)
    return tokens[:, :-1], tokens[:, 1:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepRunner:
    """Real optimiser steps on random tokens: forward/backward over the timed micro-batches, then LR,
    clip, decay, the optimisers and every training component, as `pgolf.train.Trainer.step`."""

    def __init__(self, cfg: RunConfig, device: torch.device, compile_model: bool, probe_seqs: int,
                 timed_micro: int) -> None:
        from pgolf.components import build_components
        from pgolf.dist import use_bf16
        from pgolf.optim.groups import build_optimizers

        torch.manual_seed(cfg.train.seed)
        self.cfg, self.device, self.probe_seqs, self.timed_micro = cfg, device, probe_seqs, timed_micro
        self.model = GPT(cfg.model).to(device)
        self.optimizers = build_optimizers(self.model, cfg.optim)
        self.components = build_components(cfg, self.model)
        self.runner = torch.compile(self.model, dynamic=False) if compile_model else self.model
        self.bf16 = use_bf16(cfg.train.dtype, device)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.steps_done = 0

    def step(self) -> tuple[float, float]:
        """(forward/backward seconds, optimiser seconds) of one step."""
        from pgolf.components import StepEvent
        from pgolf.optim.groups import decay_weights_
        from pgolf.optim.schedule import apply_lr, schedule_at
        from pgolf.train import autocast_context

        cfg = self.cfg
        t0 = time.perf_counter()
        for _ in range(self.timed_micro):
            x, y = _random_batch(self.probe_seqs, cfg.train.train_seq_len, cfg.model.vocab_size, self.device, self.gen)
            with autocast_context(self.device, self.bf16):
                loss = self.runner(x, y)
            (loss / self.timed_micro).backward()
        _sync(self.device)
        t1 = time.perf_counter()
        point = schedule_at(self.steps_done, 0.0, cfg.optim, cfg.train, 0.0)
        apply_lr(self.optimizers, point.lr_mul, point.muon_momentum, point.wd_mul)
        if cfg.optim.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip_norm)
        decay_weights_(self.optimizers)
        for opt in self.optimizers:
            opt.step()
        self.steps_done += 1
        event = StepEvent(step=self.steps_done, lr_mul=point.lr_mul, warmdown_mul=point.warmdown_mul, frac=0.0,
                          elapsed_s=0.0)
        for component in self.components:
            component.update(event)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return t1 - t0, time.perf_counter() - t1


def steps_in_budget(cfg: RunConfig, step_seconds: dict[str, float], budget: float) -> int:
    """Steps that fit the training budget: looping switches on at loop_enable_frac of the budget's time
    (training progress is time over budget), so each plan runs for its share; capped by train.iterations."""
    if budget <= 0:
        return cfg.train.iterations
    if "looped" in step_seconds:
        frac = cfg.model.loop_enable_frac
        steps = frac * budget / step_seconds["one pass"] + (1.0 - frac) * budget / step_seconds["looped"]
    else:
        steps = budget / step_seconds["step"]
    return min(int(steps), cfg.train.iterations)


def time_steps(cfg: RunConfig, *, steps: int = 3, compile_model: bool = False, probe_seqs: int = 0, nproc: int = 1,
               device: torch.device | None = None) -> StepTiming:
    """Time `steps` optimiser steps after one untimed warm-up (per plan with depth recurrence).

    The step is one rank's share of the global batch over `nproc` ranks (communication not counted).
    Micro-batches hold `probe_seqs` sequences (default: up to PROBE_TOKENS tokens); when that is fewer
    than a micro-batch, one micro-batch is timed per step and scaled to the whole step."""
    from pgolf.train import budget_seconds, local_accum_steps

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tc = cfg.train
    micro_seqs = tc.train_batch_tokens // tc.grad_accum_steps // tc.train_seq_len
    accum = local_accum_steps(tc.grad_accum_steps, nproc)
    probe = max(1, min(micro_seqs, probe_seqs or PROBE_TOKENS // tc.train_seq_len))
    timed_micro = accum if probe == micro_seqs else 1
    scale = accum * micro_seqs / (probe * timed_micro)
    runner = _StepRunner(cfg, device, compile_model, probe, timed_micro)
    looped = cfg.model.num_loops > 0 and cfg.model.loop_enable_frac > 0
    plans = {"one pass": False, "looped": True} if looped else {"step": runner.model.looping}
    step_s: dict[str, float] = {}
    opt_s: dict[str, float] = {}
    for label, looping in plans.items():
        runner.model.set_looping(looping)
        runner.step()  # warm-up (and compilation), untimed
        times = [runner.step() for _ in range(max(steps, 1))]
        fwd_bwd = sum(t[0] for t in times) / len(times)
        opt_s[label] = sum(t[1] for t in times) / len(times)
        step_s[label] = fwd_bwd * scale + opt_s[label]
    budget = budget_seconds(cfg)
    return StepTiming(device=str(device), bf16=runner.bf16, compiled=compile_model, timed_steps=max(steps, 1),
                      probe_seqs=probe, micro_seqs=micro_seqs, micro_batches=accum, nproc=nproc,
                      seq_len=tc.train_seq_len,
                      step_seconds=step_s, optimizer_seconds=opt_s, budget_seconds=budget,
                      steps_in_budget=steps_in_budget(cfg, step_s, budget))
