"""`pgolf report RUN_DIR...`: PNG plots of finished runs and a Markdown report embedding them.

Plots (several runs overlaid, one legend entry per run): training loss against training seconds and
against tokens, val_bpb at the periodic evaluations with the final roundtrip score, the LR multiplier
per step, and the artifact's per-tensor bits and stored bytes. Curves come from `metrics.jsonl`
(events `step`, `eval`), scores and bytes from `summary.json`. The per-tensor table comes from
`summary.json` (`quant_table`), else from the artifact itself (its per-tensor plans, or the baseline
int8 metadata); a run without one is left out of that plot and the report says why.

Matplotlib is used through `Figure` and the Agg canvas directly: no display, no pyplot global state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic
from pgolf.runinfo import METRICS, Run, load_runs, need, read_metrics
from pgolf.stats import spread

BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int64": 64, "int32": 32, "int16": 16,
        "int8": 8, "uint8": 8, "bool": 8}


@dataclass(frozen=True)
class TensorRow:
    """One stored tensor: bits per value and bytes before compression."""

    name: str
    bits: float
    nbytes: int


@dataclass
class Curves:
    """What one run logged over time."""

    label: str
    seconds: list[float]
    tokens: list[float]
    steps: list[int]
    loss: list[float]
    lr_mul: list[float]
    eval_tokens: list[float]
    eval_bpb: list[float]
    final_tokens: float | None
    final_bpb: float | None


def labels_for(runs: list[Run]) -> list[str]:
    """Folder names, with the parent folder added where two runs share a name (seed1337 of two groups)."""
    names = [r.label for r in runs]
    return [f"{r.path.parent.name}/{r.label}" if names.count(r.label) > 1 else r.label for r in runs]


def curves(run: Run, label: str) -> Curves:
    batch = int(need(need(run.config_dict, "train", run.path / "header.json config", "dict"),
                     "train_batch_tokens", run.path / "header.json config.train", "int"))
    events = read_metrics(run.path / METRICS)
    steps = [e for e in events if e.get("event") == "step" and _finite(e.get("step"), e.get("loss"))]
    evals = [e for e in events if e.get("event") == "eval" and _finite(e.get("step"), e.get("val_bpb"))]
    final_steps = run.summary.get("steps")
    final_bpb = run.summary.get("val_bpb")
    return Curves(
        label=label, seconds=[float(e.get("train_seconds", math.nan)) for e in steps],
        tokens=[float(e["step"]) * batch for e in steps], steps=[int(e["step"]) for e in steps],
        loss=[float(e["loss"]) for e in steps], lr_mul=[float(e.get("lr_mul", math.nan)) for e in steps],
        eval_tokens=[float(e["step"]) * batch for e in evals], eval_bpb=[float(e["val_bpb"]) for e in evals],
        final_tokens=float(final_steps) * batch if _finite(final_steps, final_bpb) else None,
        final_bpb=float(final_bpb) if _finite(final_steps, final_bpb) else None,
    )


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)


# ---------------------------------------------------------------- per-tensor table

def _rows_from_plans(plans: dict[str, Any]) -> list[TensorRow]:
    """Rows from the artifact's per-tensor plans: bits (or the float storage width) and the exact stored
    bytes of every stream of the tensor (codes, scales, LQER factors)."""
    from pgolf.quant.layout import stream_nbytes, stream_specs

    rows = []
    for name, p in plans.items():
        bits = float(p.bits) if p.kind.startswith("intx") else float(BITS.get(p.store_dtype, 32))
        rows.append(TensorRow(name, bits, sum(stream_nbytes(p, part) for part in stream_specs(p))))
    return rows


def tensor_table(run: Run) -> tuple[list[TensorRow] | None, str]:
    """(rows, where they came from) or (None, why there are none)."""
    table = run.summary.get("quant_table")
    if isinstance(table, list) and table:
        try:
            return [TensorRow(str(t["name"]), float(t["bits"]), int(t["bytes"])) for t in table], "summary quant_table"
        except (KeyError, TypeError, ValueError):
            return None, "summary.json quant_table rows lack name/bits/bytes"
    path = run.artifact_path
    if not path.is_file():
        return None, f"no per-tensor table in summary.json and no artifact at {path.name}"
    from pgolf.artifact import read_artifact

    try:
        loaded = read_artifact(path)
    except UserError as exc:
        return None, f"artifact unreadable by this pgolf ({exc})"
    return _rows_from_plans(loaded.plans), "artifact per-tensor plans"


# ---------------------------------------------------------------- plotting

def _figure(width: float = 8.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def line_plot(series: Sequence[Curves], x: Callable[[Curves], list[float]], y: Callable[[Curves], list[float]],
              xlabel: str, ylabel: str, title: str) -> bytes | None:
    """One line per run; None when no run has points."""
    drawn = [(c, x(c), y(c)) for c in series if y(c)]
    if not drawn:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for c, xs, ys in drawn:
        ax.plot(xs, ys, linewidth=1.0, label=c.label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def val_plot(series: Sequence[Curves]) -> bytes | None:
    """Periodic val_bpb per run (line) and the final roundtrip score (star)."""
    if not any(c.eval_bpb or c.final_bpb is not None for c in series):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for c in series:
        (line,) = ax.plot(c.eval_tokens, c.eval_bpb, marker="o", markersize=3, linewidth=1.0, label=c.label)
        if c.final_bpb is not None:
            ax.plot([c.final_tokens], [c.final_bpb], marker="*", markersize=11, linestyle="none", color=line.get_color())
    ax.set(xlabel="training tokens", ylabel="val_bpb", title="val_bpb at evaluations (star: final, from the artifact)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def tensor_plot(tables: list[tuple[str, list[TensorRow]]]) -> bytes:
    """Bits per value (top) and stored bytes (bottom) of each tensor, runs side by side."""
    names = list(dict.fromkeys(r.name for _, rows in tables for r in rows))
    index = {n: i for i, n in enumerate(names)}
    fig = _figure(max(8.0, 0.28 * len(names) + 2), 7.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(tables)
    for k, (label, rows) in enumerate(tables):
        xs = [index[r.name] + (k - (len(tables) - 1) / 2) * width for r in rows]
        top.bar(xs, [r.bits for r in rows], width=width, label=label)
        bottom.bar(xs, [r.nbytes for r in rows], width=width, label=label)
    top.set(ylabel="bits per value", title="per-tensor storage of the artifact (before compression)")
    bottom.set(ylabel="bytes", yscale="log")
    bottom.set_xticks(range(len(names)), names, rotation=90, fontsize="x-small")
    for ax in (top, bottom):
        ax.grid(alpha=0.3, axis="y")
    top.legend(fontsize="small")
    return _png(fig)


# ---------------------------------------------------------------- report

def summary_table(runs: list[Run], labels: list[str]) -> list[str]:
    lines = ["| run | seed | val_bpb | val_loss | pre-quant bpb | bytes = code + model | steps | train s | tok/s |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for run, label in zip(runs, labels):
        s = run.summary
        pre = s.get("pre_quant_val_bpb")
        lines.append(f"| {label} | {run.seed} | {run.metric('val_bpb'):.6f} | {run.metric('val_loss'):.6f} | "
                     f"{f'{pre:.6f}' if _finite(pre) else '—'} | {run.count('total_bytes'):,} = "
                     f"{run.count('code_bytes'):,} + {run.count('model_bytes'):,} | {run.count('steps'):,} | "
                     f"{run.metric('train_seconds'):.1f} | {float(s.get('tokens_per_second', math.nan)):,.0f} |")
    return lines


def experiment_lines(runs: list[Run]) -> list[str]:
    """Mean and std of val_bpb per experiment with two or more seeds."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.experiment_hash, []).append(r)
    out = []
    for h, members in groups.items():
        if len(members) > 1:
            s = spread([m.metric("val_bpb") for m in members])
            out.append(f"- {members[0].name} (experiment `{h}`): val_bpb {s.mean:.6f} ± {s.std:.6f} "
                       f"over {s.n} seeds")
    return out


def make_report(run_specs: list[str], out: str | Path) -> Path:
    """Write the PNGs and report.md for the runs into `out`; returns the report's path."""
    runs = load_runs(run_specs)
    if not runs:
        raise UserError("pgolf report needs at least one run folder")
    out = Path(out)
    labels = labels_for(runs)
    series = [curves(r, lbl) for r, lbl in zip(runs, labels)]
    plots: dict[str, tuple[str, bytes | None]] = {
        "loss_time.png": ("Training loss against time", line_plot(
            series, lambda c: c.seconds, lambda c: c.loss, "training seconds", "train loss (nats)", "training loss")),
        "loss_tokens.png": ("Training loss against tokens", line_plot(
            series, lambda c: c.tokens, lambda c: c.loss, "training tokens", "train loss (nats)", "training loss")),
        "val_bpb.png": ("val_bpb at evaluations", val_plot(series)),
        "lr.png": ("LR multiplier", line_plot(
            series, lambda c: [float(s) for s in c.steps], lambda c: c.lr_mul, "step", "LR multiplier", "LR schedule")),
    }
    tables, notes = [], []
    for run, label in zip(runs, labels):
        rows, why = tensor_table(run)
        if rows:
            tables.append((label, rows))
        else:
            notes.append(f"- per-tensor plot: {label} left out ({why})")
    plots["tensors.png"] = ("Per-tensor bits and bytes", tensor_plot(tables) if tables else None)
    body = ["# Run report", "", *summary_table(runs, labels), ""]
    body += experiment_lines(runs) + ([""] if experiment_lines(runs) else [])
    for name, (title, png) in plots.items():
        if png is None:
            notes.append(f"- {title}: no data in the runs' metrics.jsonl/summary.json, not plotted")
            continue
        write_bytes_atomic(out / name, png)
        body += [f"## {title}", "", f"![{title}]({name})", ""]
    if notes:
        body += ["## Not plotted", "", *notes, ""]
    body += ["Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    report = out / "report.md"
    write_bytes_atomic(report, "\n".join(body).encode("utf-8"))
    return report
