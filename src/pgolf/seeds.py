"""Seeds of one experiment and comparisons between experiments: `pgolf seeds` and `pgolf compare`.

`run_seeds` runs one config once per seed, one after another in this process (under torchrun every
rank runs the same seeds in the same order), each in its own run folder inside one group folder
`OUT_DIR/GROUP/`, and writes `seeds.json` there beside the runs: mean, sample std and the per-seed
numbers. `compare` reads two sets of finished runs, checks each is the seeds of one experiment, and
applies a significance policy from `pgolf.stats`.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pgolf.config import RunConfig
from pgolf.errors import UserError
from pgolf.runinfo import Run, check_one_experiment, load_run, load_runs
from pgolf.stats import POLICIES, OneSidedTest, decide, spread, welch_improvement

SEEDS_FILE = "seeds.json"
# Per-seed columns of every table: (title, summary key, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("val_bpb", "val_bpb", "{:.6f}"), ("val_loss", "val_loss", "{:.6f}"), ("bytes", "total_bytes", "{:,}"),
    ("steps", "steps", "{:,}"), ("train s", "train_seconds", "{:.1f}"),
)


def parse_seeds(text: str) -> tuple[int, ...]:
    """"1337,42,2025" -> (1337, 42, 2025): distinct non-negative integers, at least one."""
    try:
        seeds = tuple(int(s.strip().replace("_", "")) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers like 1337,42,2025, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed, e.g. --seeds 1337,42,2025")
    if len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**63 for s in seeds):
        raise UserError(f"--seeds {text} must list distinct seeds in 0..2^63-1")
    return seeds


def new_group_id(name: str) -> str:
    """A fresh group folder name: the experiment name, 'seeds', date and time, 6 random hex digits."""
    return f"{name}-seeds-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def seed_config(cfg: RunConfig, group_dir: Path, seed: int) -> RunConfig:
    """`cfg` for one seed: its own run folder `group_dir/seedS` (or `RUN_ID-seedS`), the seed set."""
    run_id = f"{cfg.run_id}-seed{seed}" if cfg.run_id else f"seed{seed}"
    return dataclasses.replace(cfg, out_dir=str(group_dir), run_id=run_id,
                               train=dataclasses.replace(cfg.train, seed=seed)).validate()


def run_seeds(cfg: RunConfig, seeds: Sequence[int], command: str, *, group: str = "",
              prepare: Callable[[RunConfig], object] | None = None) -> Path:
    """Run `cfg` once per seed via `pgolf.main.execute`, then write seeds.json (rank 0); returns the group folder."""
    from pgolf import dist
    from pgolf.bundle import build_bundle
    from pgolf.main import execute

    code = build_bundle(cfg)  # one script for every seed (the bundle bakes no seed)
    info = dist.init()
    try:
        group = group or dist.broadcast_text(new_group_id(cfg.name) if info.is_main else "", info.device)
        group_dir = Path(cfg.out_dir) / group
        if (group_dir / SEEDS_FILE).exists():
            raise UserError(f"{group_dir / SEEDS_FILE} exists; choose another --group or leave it empty for a fresh one")
        # one process group for every seed: a torchrun rank cannot rejoin a group it has left
        for seed in seeds:
            execute(seed_config(cfg, group_dir, seed), f"{command} [seed {seed}]", code=code, prepare=prepare,
                    shutdown=False)
    finally:
        dist.shutdown()
    if info.is_main:
        runs = [load_run(group_dir / seed_config(cfg, group_dir, s).run_id) for s in seeds]
        from pgolf.runlog import write_json_atomic

        write_json_atomic(group_dir / SEEDS_FILE, seeds_record(runs, group))
        print("\n".join(seed_table(runs)))
        print(f"seeds.json and {len(runs)} run folders in {group_dir}")
    return group_dir


def row(run: Run) -> dict[str, Any]:
    """One seed's numbers, from its summary.json."""
    return {"seed": run.seed, "run": run.label, "val_bpb": run.metric("val_bpb"), "val_loss": run.metric("val_loss"),
            "total_bytes": run.count("total_bytes"), "model_bytes": run.count("model_bytes"),
            "code_bytes": run.count("code_bytes"), "steps": run.count("steps"),
            "train_seconds": run.metric("train_seconds")}


def seeds_record(runs: list[Run], group: str) -> dict[str, Any]:
    """The content of seeds.json: the experiment, each seed's numbers, mean and std of the scores."""
    check_one_experiment(runs)
    rows = [row(r) for r in runs]
    out: dict[str, Any] = {"name": runs[0].name, "group": group, "experiment_hash": runs[0].experiment_hash,
                           "data": runs[0].data_fingerprint, "seeds": [r["seed"] for r in rows], "runs": rows}
    for key in ("val_bpb", "val_loss"):
        s = spread([r[key] for r in rows])
        out[key] = {"mean": s.mean, "std": s.std}
    return out


def seed_table(runs: list[Run], title: str = "") -> list[str]:
    """A plain-text per-seed table with mean and std lines."""
    rows = [row(r) for r in runs]
    head = f"{'seed':>8} " + " ".join(f"{t:>14}" for t, _, _ in COLUMNS) + "  run"
    lines = ([title] if title else []) + [head]
    for r in rows:
        lines.append(f"{r['seed']:>8} " + " ".join(f"{fmt.format(r[k]):>14}" for _, k, fmt in COLUMNS) + f"  {r['run']}")
    for label, fn in (("mean", lambda s: s.mean), ("std", lambda s: s.std)):
        cells = []
        for _, key, fmt in COLUMNS:
            value = fn(spread([r[key] for r in rows]))
            cells.append(f"{'-' if value is None else (fmt.format(value) if 'f' in fmt else f'{value:,.1f}'):>14}")
        lines.append(f"{label:>8} " + " ".join(cells))
    return lines


def _test_line(metric: str, test: OneSidedTest) -> str:
    unit = "nats" if metric == "val_loss" else "bpb"
    stat = (f"t = {test.statistic:.3f}, df = {test.df:.2f}, one-sided p = {test.pvalue:.4g}" if test.defined
            else "t undefined (no variance on either side)")
    return (f"{metric}: A {test.mean_a:.6f}, B {test.mean_b:.6f}, improvement {test.improvement:+.6f} {unit}; "
            f"H1 improvement > {test.margin:g}: {stat}")


def compare(spec_a: str, spec_b: str, policy_name: str) -> tuple[list[str], dict[str, Any]]:
    """Compare the runs named by two specs (see `pgolf.runinfo.expand_run_paths`): the lines to print and
    a JSON-able result. B is the candidate, A the incumbent; lower is better."""
    if policy_name not in POLICIES:
        raise UserError(f"--policy {policy_name!r} is not one of {', '.join(POLICIES)}")
    policy = POLICIES[policy_name]
    sides: dict[str, list[Run]] = {}
    for side, spec in (("A", spec_a), ("B", spec_b)):
        runs = load_runs([spec])
        if len(runs) < 2:
            raise UserError(f"side {side} ({spec}) has {len(runs)} run; Welch's test needs at least 2 seeds per side")
        check_one_experiment(runs, side=f"side {side}")
        sides[side] = runs
    values = {side: {m: [r.metric(m) for r in runs] for m in ("val_loss", "val_bpb")} for side, runs in sides.items()}
    lines: list[str] = []
    for side, runs in sides.items():
        lines += seed_table(runs, f"{side}: {len(runs)} seeds of {runs[0].name} (experiment {runs[0].experiment_hash})")
        lines.append("")
    tests = {
        "val_loss": welch_improvement(values["A"]["val_loss"], values["B"]["val_loss"]),
        "val_loss_margin": welch_improvement(values["A"]["val_loss"], values["B"]["val_loss"], POLICIES["readme"].margin),
        "val_bpb": welch_improvement(values["A"]["val_bpb"], values["B"]["val_bpb"]),
    }
    lines += [_test_line("val_loss" if k.startswith("val_loss") else k, t) for k, t in tests.items()]
    verdict = decide(policy, values["A"][policy.metric], values["B"][policy.metric])
    lines.append(f"verdict ({policy.name}: {policy.rule}): B is {'ACCEPTED' if verdict.accepted else 'NOT accepted'} "
                 f"over A; {verdict.reason}")
    result = {"policy": policy.name, "rule": policy.rule, "accepted": verdict.accepted, "reason": verdict.reason,
              "tests": {k: dataclasses.asdict(t) for k, t in tests.items()},
              "sides": {s: {"runs": [str(r.path) for r in runs], "experiment_hash": runs[0].experiment_hash,
                            **values[s]} for s, runs in sides.items()}}
    return lines, result



def save_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write a comparison result as JSON (NaN, where a test is undefined, becomes null)."""
    import json
    import math

    from pgolf.fileio import write_bytes_atomic

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return None if isinstance(x, float) and not math.isfinite(x) else x

    write_bytes_atomic(path, (json.dumps(clean(result), indent=2) + "\n").encode("utf-8"))
