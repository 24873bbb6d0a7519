"""Cumulative ablation on the CPU track: a preset, then groups of overrides added one after another,
each run with several seeds at a chosen training budget, printed as one JSON object.

    python benchmarks/ablation.py --preset cpu-baseline --seeds 1337,42 --seconds 180 \\
        --group "muoneq=--optim.muon_row_normalize true" --group "wd=--optim.muon_wd 0.04" ...

Group k runs the preset with the overrides of groups 1..k (cumulative). Every run goes through
`pgolf seeds` (its own run folders under --out), one after another in this process's machine, so the
numbers of one invocation are side by side on the same machine. Each row reports the mean and spread
of val_bpb (roundtrip), tokens/s, steps and bytes; `--out` keeps the run folders for `pgolf compare`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jsonout import emit


def parse_group(text: str) -> tuple[str, list[str]]:
    """`name=--flag value --flag value` -> (name, flags)."""
    name, _, flags = text.partition("=")
    if not name or not flags.strip():
        raise SystemExit(f"--group {text!r}: expected NAME=--section.field VALUE ...")
    return name.strip(), shlex.split(flags)


def run_group(preset: str, flags: list[str], seeds: str, seconds: float, out: Path, group: str) -> dict[str, Any]:
    """One `pgolf seeds` invocation; returns its seeds.json plus the per-run summaries."""
    cmd = [sys.executable, "-m", "pgolf", "seeds", "--preset", preset, "--seeds", seeds, "--group", group,
           "--out_dir", str(out), "--train.max_wallclock_seconds", str(seconds),
           "--budget.train_seconds", str(seconds), *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: finished but non-compliant (still reported)
        raise SystemExit(f"group {group} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    runs = sorted((out / group).glob("seed*/summary.json"))
    summaries = [json.loads(p.read_text()) for p in runs]
    return {"wall_seconds": time.perf_counter() - t0, "summaries": summaries}


def row(name: str, flags: list[str], result: dict[str, Any]) -> dict[str, Any]:
    """The table row of one group: means (and spread) over seeds."""
    s = result["summaries"]

    def stat(key: str) -> dict[str, float]:
        values = [float(x[key]) for x in s]
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    return {"group": name, "flags": flags, "seeds": [x["seed"] for x in s], "val_bpb": stat("val_bpb"),
            "pre_quant_val_bpb": stat("pre_quant_val_bpb"), "tokens_per_second": stat("tokens_per_second"),
            "steps": stat("steps"), "total_bytes": stat("total_bytes"), "eval_seconds": stat("eval_seconds"),
            "wall_seconds": result["wall_seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-baseline")
    ap.add_argument("--seeds", default="1337,42")
    ap.add_argument("--seconds", type=float, default=180.0, help="training budget of every run")
    ap.add_argument("--group", action="append", default=[], help="NAME=--flags (cumulative, in order)")
    ap.add_argument("--independent", action="store_true", help="groups are not cumulative: each is preset + its own")
    ap.add_argument("--base-flags", default="", help="flags applied to every run, the first row included")
    ap.add_argument("--out", default="runs/ablation", help="folder of the run folders")
    ap.add_argument("--json", default="", help="also write the JSON here")
    a = ap.parse_args()
    out = Path(a.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = shlex.split(a.base_flags)
    rows, flags = [], list(base)
    for index, (name, extra) in enumerate([("base", [])] + [parse_group(g) for g in a.group]):
        flags = base + extra if a.independent else flags + extra
        rows.append(row(name, list(flags), run_group(a.preset, flags, a.seeds, a.seconds, out,
                                                    f"{stamp}-{index:02d}-{name}")))
        print(f"{name}: val_bpb {rows[-1]['val_bpb']['mean']:.4f} ± {rows[-1]['val_bpb']['std']:.4f}, "
              f"{rows[-1]['tokens_per_second']['mean']:,.0f} tok/s", file=sys.stderr, flush=True)
    result = {"benchmark": "ablation", "preset": a.preset, "seconds": a.seconds, "seeds": a.seeds,
              "cumulative": not a.independent, "rows": rows}
    emit(result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
