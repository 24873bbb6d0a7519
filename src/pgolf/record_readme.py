"""The README.md of a record folder, generated from its submission.json, the runs' config and the runs.

It says what a reviewer asks first: the score (mean and std over seeds) and each seed's numbers, the
counted bytes, the configuration as differences from the challenge baseline's defaults (every
technique is a config field that is off by default, so the list names the techniques on), the
compliance reports, and how to rerun the bundle.
"""

from __future__ import annotations

from typing import Any

from pgolf.config import RunConfig, config_to_dict
from pgolf.runinfo import Run

# Fields that place a run rather than define it: left out of the difference list.
PLACEMENT_FIELDS = ("name", "out_dir", "run_id", "train.seed", "data.root", "data.dataset_dir", "data.tokenizer_path")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"num_layers": 9}} -> {"model.num_layers": 9}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(flag, value, baseline default) for every field that differs from RunConfig()'s defaults."""
    ours, base = flatten(config_to_dict(cfg)), flatten(config_to_dict(RunConfig()))
    return [(k, v, base.get(k)) for k, v in ours.items() if k not in PLACEMENT_FIELDS and v != base.get(k)]


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _num(x: float | None, digits: int = 6) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def results_table(sub: dict[str, Any]) -> list[str]:
    lines = ["| seed | val_loss (nats) | val_bpb | bytes (code + model) | steps | train s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for seed in sub["seeds"]:
        r = sub["seed_results"][str(seed)]
        lines.append(f"| {seed} | {r['val_loss']:.6f} | {r['val_bpb']:.6f} | {r['artifact_bytes']:,} = "
                     f"{sub['bytes_code']:,} + {r['model_bytes']:,} | {r['steps']:,} | {r['train_seconds']:.1f} |")
    lines.append(f"| **mean** | **{sub['val_loss']:.6f}** | **{sub['val_bpb']:.6f}** | max {sub['bytes_total']:,} | | |")
    lines.append(f"| std | {_num(sub.get('val_loss_std'))} | {_num(sub['val_bpb_std'])} | | | |")
    return lines


def config_lines(cfg: RunConfig, sub: dict[str, Any]) -> list[str]:
    m, t, q, e = cfg.model, cfg.train, cfg.quant, cfg.eval
    data = sub["data_fingerprint"]
    return [
        f"- experiment `{cfg.name}`, experiment hash `{sub['experiment_hash']}` (the resolved config without seed "
        f"and run identity; every seed log names it)",
        f"- model: {m.num_layers} layers x {m.model_dim}, heads {m.num_heads}/{m.num_kv_heads}, MLP x{m.mlp_mult:g}, "
        f"vocab {m.vocab_size}, tied embeddings {m.tie_embeddings}",
        f"- training: {t.train_batch_tokens:,} tokens/step at seq {t.train_seq_len}, at most {t.iterations:,} steps "
        f"and {t.max_wallclock_seconds:g} s, warmdown {t.warmdown_iters} steps, {sub.get('world_size', 1)} process(es)",
        f"- export: {q.scheme}, {q.compressor} level {q.level}; budget {cfg.budget.artifact_max_bytes:,} bytes",
        f"- evaluation: seq {cfg.eval_seq_len}, stride {cfg.eval_stride}" + (f", first {e.max_tokens:,} tokens only"
                                                                            if e.max_tokens else ""),
        "- data: " + ", ".join(f"{k} {v}" for k, v in data.items()),
    ]


def compliance_lines(sub: dict[str, Any]) -> list[str]:
    reports = sub.get("compliance")
    if not reports:
        return ["No compliance report (compliance.json) was written by these runs."]
    lines = []
    for seed, c in reports.items():
        state = {True: "clean", False: "NOT clean", None: "unreadable report"}[c.get("clean")]
        failed = f" (failed: {', '.join(c['failed'])})" if c.get("failed") else ""
        lines.append(f"- seed {seed}: {state}{failed}")
    return lines


def rerun_lines(cfg: RunConfig, sub: dict[str, Any]) -> list[str]:
    from pgolf.main import ENV_FLAGS

    nproc = sub.get("world_size", 1)
    return [
        "```bash",
        "pip install -r requirements.txt",
        *(f"SEED={s} RUN_ID=seed{s} torchrun --standalone --nproc_per_node={nproc} train_gpt.py" for s in sub["seeds"]),
        "```",
        f"The script reads its data from `{cfg.dataset_dir}` and the tokenizer `{cfg.tokenizer_path}` (override "
        f"with DATA_PATH and TOKENIZER_PATH), writes each run under `{cfg.out_dir}/RUN_ID/`, and takes the challenge "
        f"baseline's environment variables ({', '.join(ENV_FLAGS)}) and `--section.field VALUE` flags on top of "
        f"its baked configuration.",
    ]


def render_readme(sub: dict[str, Any], cfg: RunConfig, runs: list[Run]) -> str:
    """The record's README.md."""
    diffs = differences(cfg)
    n = len(sub["seeds"])
    lines = [
        f"# {sub['name']}", "",
        *( [sub["blurb"], ""] if sub.get("blurb") else []),
        f"**val_bpb {sub['val_bpb']:.6f}** (mean of {n} seed{'s' if n > 1 else ''}, std {_num(sub['val_bpb_std'])}), "
        f"val_loss {sub['val_loss']:.6f} nats; at most {sub['bytes_total']:,} bytes; {sub['hardware']}; "
        f"torch {sub['pytorch_version']}. By {sub['author']} (@{sub['github_id']}), {sub['date']}.", "",
        "## Results", "", *results_table(sub), "",
        f"Bytes per seed are the compressed model plus the shipped `train_gpt.py` ({sub['bytes_code']:,} bytes, "
        f"sha256 `{sub['code_sha256']}`); `bytes_total` is the largest. Logs: "
        + ", ".join(f"`train_seed{s}.log`" for s in sub["seeds"]) + ".", "",
        "## Configuration", "", *config_lines(cfg, sub), "",
        "Differences from the challenge baseline's defaults (techniques are config fields, off by default):", "",
        *([f"- `{k}` = {_fmt(v)} (default {_fmt(d)})" for k, v, d in diffs] or ["- none: this is the baseline"]), "",
        "## Compliance", "", *compliance_lines(sub), "",
        "## Counted code", "",
        "`train_gpt.py` is the single-file bundle of this configuration (`pgolf bundle`): the pgolf modules a run "
        "imports, stripped of docstrings and comments and compressed inside a short loader, with the configuration "
        "baked in. Its size is the counted code. Each seed log starts with `code_sha256 <hex> bytes <n>`, the bundle "
        "that produced it; `pgolf verify` checks that it is this file.", "",
        "## Rerun", "", *rerun_lines(cfg, sub), "",
        f"Generated by pgolf {sub.get('pgolf_version', '')} from the run folders "
        + ", ".join(f"`{r.label}`" for r in runs) + ".", "",
    ]
    return "\n".join(lines)
