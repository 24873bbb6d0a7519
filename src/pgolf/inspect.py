"""`pgolf inspect`: what a config will be, before any training.

- Parameters per role and per optimiser group, from the role table and the optimiser split
  (`pgolf.model.roles`, `pgolf.optim.groups`) of a model built on the meta device.
- The artifact's bytes: the counted code exactly (the bundle, `pgolf.bundle.code_bytes`) plus the
  model estimated from the export plan (`pgolf.quant.plan.plan_export`). Each quantised format of the
  plan (bits, clip rule, row length, packing, codec) is measured now: Gaussian rows of that length are
  quantised and compressed with the plan's own stages, giving bytes per parameter. That is close to
  the CPU track's trained weights (cpu-baseline's trained int8 artifact measured 875,662 model bytes;
  this estimate gives 913,101, a Gaussian-weight export 903,710) and an upper bound for long GPU runs,
  whose heavier-tailed weights compress better (record #414: about 4.4 bits per int6 parameter against
  5.4 here). Scales, float copies and pass-through tensors count their stored bytes; the header is
  compressed as written. Bit allocation (whose range of totals is given) and pruning fit the file at
  export.
- The step time on this machine and the steps that fit the training budget (`pgolf.steptime`).
- Every technique of the record a preset reproduces, with its state (`pgolf.presets.techniques`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pgolf.config import RunConfig, config_to_dict
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.roles import ROLES, param_roles
from pgolf.presets.techniques import RECORDS, RecordFacts, Technique, base_for, record_of, techniques_for
from pgolf.quant.layout import QuantizedTensor, TensorPlan, stream_nbytes, stream_specs
from pgolf.steptime import StepTiming, time_steps

SAMPLE_NUMEL = 65_536  # elements per measured format: enough that codec framing is negligible
GAUSSIAN_SEED = 0


# ---------------------------------------------------------------- parameters

@dataclass
class ParameterReport:
    """Parameter counts of a config's model."""

    total: int
    by_role: dict[str, int]
    """Role (`pgolf.model.roles.ROLES`) -> parameters."""
    groups: list[dict[str, Any]]
    """One row per optimiser param group (`pgolf.optim.groups.describe_groups`)."""


def meta_model(cfg: RunConfig) -> GPT:
    """The config's model with shapes only (no memory, no init cost)."""
    with torch.device("meta"):
        return GPT(cfg.model)


def parameter_report(model: GPT, cfg: RunConfig) -> ParameterReport:
    """Parameter counts by role and by optimiser group (the groups partition the parameters)."""
    from pgolf.optim.groups import build_optimizers, describe_groups

    roles = param_roles(model)
    by_role = {r: 0 for r in ROLES}
    for name, p in model.named_parameters():
        by_role[roles[name]] += p.numel()
    return ParameterReport(total=count_parameters(model), by_role=by_role,
                           groups=describe_groups(build_optimizers(model, cfg.optim)))


# ---------------------------------------------------------------- bytes

@dataclass
class BytesLine:
    """Estimated bytes of the tensors stored in one format."""

    label: str
    """The format: `int6 gptq_lite`, `float float16`..."""
    params: int
    bytes: float

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.bytes / max(self.params, 1)


@dataclass
class ByteEstimate:
    """Counted code bytes and the estimated model bytes of a config, against its budget."""

    code_bytes: int
    """The bundle's size, exact."""
    header_bytes: int
    """The artifact's compressed JSON header and fixed header."""
    lines: list[BytesLine]
    budget_bytes: int
    margin_bytes: int
    codec: str
    fitted_at_export: list[str] = field(default_factory=list)
    """The fitting switches on (quant.allocate_bits, quant.prune)."""
    allocated_range: tuple[int, int] | None = None
    """With quant.allocate_bits: total bytes with every allocated tensor at min_bits, and at max_bits."""
    min_bits: int = 0
    max_bits: int = 0

    @property
    def model_bytes(self) -> int:
        return self.header_bytes + round(sum(line.bytes for line in self.lines))

    @property
    def total_bytes(self) -> int:
        return self.code_bytes + self.model_bytes

    @property
    def slack_bytes(self) -> int:
        """Bytes left under the budget less the margin (negative when over)."""
        return self.budget_bytes - self.margin_bytes - self.total_bytes

    @property
    def fits(self) -> bool:
        """Whether the estimate fits: as planned, or, with bit allocation, at the narrowest widths allowed."""
        smallest = self.allocated_range[0] if self.allocated_range else self.total_bytes
        return smallest <= self.budget_bytes - self.margin_bytes


def _sample_plan(plan: TensorPlan) -> TensorPlan:
    """The plan of a Gaussian sample in the same format: rows of the tensor's length, ~SAMPLE_NUMEL in all."""
    if plan.kind == "intx_row":
        rows = max(1, min(plan.rows, math.ceil(SAMPLE_NUMEL / max(plan.cols, 1))))
        shape: tuple[int, ...] = (rows, plan.cols)
    else:
        shape = (min(plan.numel, SAMPLE_NUMEL),)
    return replace(plan, shape=shape, role="", gptq=False, lqer_rank=0)


def code_bits_per_param(plan: TensorPlan, codec: list[tuple[str, int]], cache: dict[TensorPlan, float]) -> float:
    """Compressed bits per code of a plan's format, measured on Gaussian rows (cached per format)."""
    from pgolf.quant.intx import quantize_rtn
    from pgolf.quant.pack import compress_best, encode_stream

    sample = _sample_plan(plan)
    if sample not in cache:
        gen = torch.Generator().manual_seed(GAUSSIAN_SEED)
        # unit variance: the baseline's 1/127 scale floor never binds, so all 8 bits are used as in training
        w = torch.randn(sample.shape, generator=gen)
        q = QuantizedTensor(plan=sample, parts=quantize_rtn(w, sample))
        cache[sample] = 8.0 * len(compress_best(encode_stream(q, "q"), codec)[2]) / sample.numel
    return cache[sample]


def _label(plan: TensorPlan) -> str:
    if not plan.is_int:
        return f"{plan.kind} {plan.store_dtype}"
    clip = plan.clip + ("+gptq" if plan.gptq else "")
    return f"int{plan.bits} {clip}" + (f" g{plan.group_size}" if plan.group_size else "")


def header_bytes(plans: dict[str, TensorPlan], cfg: RunConfig, code_bytes: int, codec: list[tuple[str, int]]) -> int:
    """The artifact's JSON header (configs, plans, layout) compressed, plus the fixed file header."""
    from pgolf.artifact import FORMAT_VERSION, pack_header, payload_bytes
    from pgolf.quant.export import stored_run_config
    from pgolf.quant.pack import compress_best

    header = {"format": FORMAT_VERSION, "meta": {"code_bytes": code_bytes, "extra_meta": {}},
              "model_config": config_to_dict(cfg.model), "run_config": stored_run_config(cfg),
              "tensors": [[n, p.to_dict()] for n, p in plans.items()],
              "layout": [[n, part] for n, p in plans.items() for part in stream_specs(p)]}
    raw = payload_bytes(header, [])
    name, _, payload = compress_best(raw, codec)
    return len(pack_header(name, raw, payload)) + len(payload)


def plan_lines(plans: dict[str, TensorPlan], codec: list[tuple[str, int]],
               cache: dict[TensorPlan, float]) -> list[BytesLine]:
    """Estimated bytes per format of a plan, largest first."""
    lines: dict[str, BytesLine] = {}
    for plan in plans.values():
        parts = stream_specs(plan)
        nbytes = sum(stream_nbytes(plan, part) for part in parts if part != "q")  # scales, floats, LQER: stored
        if "q" in parts:
            nbytes += plan.numel * code_bits_per_param(plan, codec, cache) / 8.0
        line = lines.setdefault(_label(plan), BytesLine(label=_label(plan), params=0, bytes=0.0))
        line.params += plan.numel
        line.bytes += nbytes
    return sorted(lines.values(), key=lambda line: -line.bytes)


def estimate_bytes(model: GPT, cfg: RunConfig, code_bytes: int) -> ByteEstimate:
    """Code bytes plus the model bytes the export plan should give (see the module docstring); with bit
    allocation, also the totals with every allocated tensor at quant.min_bits and at quant.max_bits."""
    from pgolf.quant.fit import eligible_for_bits, with_bits
    from pgolf.quant.pack import codec_choices
    from pgolf.quant.plan import plan_export

    q = cfg.quant
    plans = plan_export(model, param_roles(model), q)
    codec = codec_choices(q.compressor, q.level)
    cache: dict[TensorPlan, float] = {}
    head = header_bytes(plans, cfg, code_bytes, codec)
    allocated: tuple[int, int] | None = None
    if q.allocate_bits:
        names = eligible_for_bits(plans)
        allocated = tuple(  # type: ignore[assignment]
            code_bytes + head + round(sum(ln.bytes for ln in plan_lines(with_bits(plans, {n: bits for n in names}),
                                                                         codec, cache)))
            for bits in (q.min_bits, q.max_bits))
    fitted = [flag for flag, on in (("quant.allocate_bits", q.allocate_bits), ("quant.prune", q.prune)) if on]
    return ByteEstimate(code_bytes=code_bytes, header_bytes=head, lines=plan_lines(plans, codec, cache),
                        budget_bytes=cfg.budget.artifact_max_bytes, margin_bytes=q.margin_bytes, codec=q.compressor,
                        fitted_at_export=fitted, allocated_range=allocated, min_bits=q.min_bits, max_bits=q.max_bits)


# ---------------------------------------------------------------- the report

@dataclass
class InspectReport:
    """Everything `pgolf inspect` prints about one config."""

    preset: str
    cfg: RunConfig
    params: ParameterReport
    bytes: ByteEstimate
    timing: StepTiming | None
    techniques: list[tuple[str, Technique]]


def technique_states(preset: str, cfg: RunConfig) -> list[tuple[str, Technique]]:
    """(state, row) for every technique of the record `preset` reproduces (empty for other presets)."""
    table = techniques_for(preset)
    if not table:
        return []
    base = base_for(preset)
    return [(t.state(cfg, base), t) for t in table]


def inspect_config(preset: str, cfg: RunConfig, *, steps: int = 3, compile_model: bool = False, probe_seqs: int = 0,
                   nproc: int = 1, device: torch.device | None = None) -> InspectReport:
    """Everything `pgolf inspect` prints, as data; `steps=0` skips the timing."""
    from pgolf.bundle import code_bytes

    model = meta_model(cfg)
    timing = (time_steps(cfg, steps=steps, compile_model=compile_model, probe_seqs=probe_seqs, nproc=nproc,
                         device=device) if steps > 0 else None)
    return InspectReport(preset=preset, cfg=cfg, params=parameter_report(model, cfg),
                         bytes=estimate_bytes(model, cfg, code_bytes(cfg)), timing=timing,
                         techniques=technique_states(preset, cfg))


def report_json(report: InspectReport) -> dict[str, Any]:
    """The report as JSON-ready data (for --json)."""
    b = report.bytes
    out: dict[str, Any] = {
        "preset": report.preset, "parameters": report.params.total, "parameters_by_role": report.params.by_role,
        "optimizer_groups": report.params.groups,
        "bytes": {"code": b.code_bytes, "model": b.model_bytes, "header": b.header_bytes, "total": b.total_bytes,
                  "budget": b.budget_bytes, "margin": b.margin_bytes, "slack": b.slack_bytes,
                  "lines": [{"format": ln.label, "params": ln.params, "bytes": round(ln.bytes),
                             "bits_per_param": ln.bits_per_param} for ln in b.lines],
                  "fitted_at_export": b.fitted_at_export, "allocated_range": b.allocated_range, "fits": b.fits},
        "techniques": [{"name": t.name, "state": s, "flags": list(t.flags), "note": t.note}
                       for s, t in report.techniques],
    }
    if report.timing is not None:
        out["timing"] = dataclasses.asdict(report.timing)
    return json.loads(json.dumps(out))


# ---------------------------------------------------------------- text

def _flag_values(cfg: RunConfig, flags: tuple[str, ...]) -> str:
    out = []
    for flag in flags:
        section, name = flag.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        out.append(f"{flag}={text}")
    return " ".join(out)


def format_parameters(p: ParameterReport) -> list[str]:
    roles = " | ".join(f"{role} {n:,}" for role, n in p.by_role.items() if n)
    lines = [f"parameters {p.total:,}", f"  by role: {roles}",
             f"  {'group':10s} {'optimiser':9s} {'lr':>7s} {'wd':>6s} {'tensors':>7s} {'parameters':>12s}"]
    for g in p.groups:
        lines.append(f"  {g['group']:10s} {g['optimizer']:9s} {g['lr']:7.4g} {g['wd']:6.3g} {g['num_tensors']:7d} "
                     f"{g['num_params']:12,d}")
    return lines


def format_bytes(b: ByteEstimate) -> list[str]:
    verdict = "fits" if b.slack_bytes >= 0 else "fits after bit allocation" if b.fits else "OVER"
    lines = [f"artifact estimate (before training): {b.total_bytes:,} bytes = code {b.code_bytes:,} + model "
             f"{b.model_bytes:,}; budget {b.budget_bytes:,} - margin {b.margin_bytes:,}: {verdict}, "
             f"slack {b.slack_bytes:+,} ({100.0 * b.total_bytes / b.budget_bytes:.1f}% of the budget)",
             "  code: the bundle of this config, exact (pgolf.bundle.code_bytes)",
             f"  model: the export plan's formats x bytes/param measured now on Gaussian rows ({b.codec}); "
             "an upper bound for long GPU runs",
             f"  {'format':24s} {'params':>12s} {'bits/param':>10s} {'bytes':>12s}"]
    for line in b.lines:
        lines.append(f"  {line.label:24s} {line.params:12,d} {line.bits_per_param:10.2f} {round(line.bytes):12,d}")
    lines.append(f"  {'header (configs, plans)':24s} {'':12s} {'':10s} {b.header_bytes:12,d}")
    if b.allocated_range:
        lo, hi = b.allocated_range
        lines.append(f"  quant.allocate_bits chooses each tensor's width at export: {lo:,} bytes with all at "
                     f"int{b.min_bits}, {hi:,} at int{b.max_bits} (the rows above are at the planned widths)")
    if "quant.prune" in b.fitted_at_export:
        lines.append("  quant.prune zeroes the cheapest +-1 codes at export until the file fits")
    return lines


def format_timing(t: StepTiming) -> list[str]:
    mode = "compiled" if t.compiled else "eager"
    dtype = "bfloat16" if t.bf16 else "float32"
    lines = [f"step time on this machine ({t.device}, {dtype}, {mode}; {t.timed_steps} timed steps after 1 warm-up, "
             f"random tokens)"]
    if t.probe_seqs < t.micro_seqs:
        lines.append(f"  timed micro-batches of {t.probe_seqs} x {t.seq_len} tokens, scaled to the step's "
                     f"{t.micro_batches} x {t.micro_seqs} x {t.seq_len}")
    else:
        lines.append(f"  {t.micro_batches} micro-batch(es) of {t.micro_seqs} x {t.seq_len} tokens per step")
    tokens = t.micro_batches * t.micro_seqs * t.seq_len
    rank = f" per rank of {t.nproc} (communication not counted)" if t.nproc > 1 else ""
    for label, seconds in t.step_seconds.items():
        lines.append(f"  {label:8s} {seconds:8.3f} s per step (optimiser and components "
                     f"{t.optimizer_seconds[label]:.3f} s) -> {tokens / seconds:,.0f} tokens/s{rank}")
    budget = f"{t.budget_seconds:g} s of training budget" if t.budget_seconds > 0 else "no time budget"
    lines.append(f"  steps in {budget}: {t.steps_in_budget:,}")
    return lines


def format_techniques(preset: str, cfg: RunConfig, rows: list[tuple[str, Technique]]) -> list[str]:
    record = record_of(preset)
    if record is None:
        return ["techniques: this preset reproduces no record (record-* and cpu-record-* presets list theirs)"]
    facts = RECORDS[record]
    lines = [f"techniques of PR #{facts.pr} ({facts.folder}) and their state in this config"]
    for state, t in rows:
        lines.append(f"  {state:10s} {t.name}")
        if t.flags:
            lines.append(f"  {'':10s}   {_flag_values(cfg, t.flags)}")
        if t.note:
            lines.append(f"  {'':10s}   note: {t.note}")
    return lines


def record_measured(facts: RecordFacts) -> list[str]:
    """What the record's own log measured, for comparison with a challenge preset's estimates."""
    model = facts.total_bytes - facts.code_bytes
    lines = [f"  the record measured (seed {facts.seed} log): {facts.params:,} parameters, {facts.steps:,} steps on "
             f"8xH100, {facts.total_bytes:,} bytes = code {facts.code_bytes:,} + model {model:,}, val_bpb "
             f"{facts.val_bpb} (mean over seeds)"]
    return lines + ([f"  ({facts.note})"] if facts.note else [])


def format_report(report: InspectReport) -> list[str]:
    """The text `pgolf inspect` prints."""
    m = report.cfg.model
    lines = [f"pgolf inspect --preset {report.preset}: {m.num_layers} blocks x {m.model_dim}, vocab {m.vocab_size}, "
             f"data {report.cfg.data.source}, budget {report.cfg.budget.artifact_max_bytes:,} bytes / "
             f"{report.cfg.train.max_wallclock_seconds:g} s", ""]
    lines += format_parameters(report.params) + [""] + format_bytes(report.bytes)
    record = record_of(report.preset)
    if record is not None and report.preset.startswith("record-"):
        lines += record_measured(RECORDS[record])
    lines.append("")
    if report.timing is not None:
        lines += format_timing(report.timing) + [""]
    return lines + format_techniques(report.preset, report.cfg, report.techniques)
