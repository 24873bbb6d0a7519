"""Record folders in the challenge's layout (openai/parameter-golf README, "Submission"; reference §1.7):
`pgolf export-record` turns the seeds of one experiment into `records/track_.../DATE_Name/` holding

    README.md          generated: results per seed, mean and std, configuration, compliance, how to rerun
    submission.json    the challenge's keys (name, author, github_id, blurb, date, val_loss, val_bpb,
                       val_bpb_std, seeds, seed_results, bytes_total, bytes_code, hardware,
                       pytorch_version) plus what `pgolf verify` checks (code_sha256, experiment_hash,
                       data_fingerprint, per-seed model bytes and artifact sha256)
    train_seed{S}.log  each run's log.txt, unchanged
    requirements.txt   torch pinned to the runs' version and the libraries the bundle imports
    train_gpt.py       the single-file bundle of the runs' config (`pgolf.bundle.write_bundle`), drop-in:
                       baseline environment variables, `torchrun --standalone --nproc_per_node=8 train_gpt.py`

Counted bytes follow the challenge: each seed's artifact bytes are its compressed model plus the size
of the shipped train_gpt.py; bytes_total is the largest of them. The folder is assembled in a
temporary sibling and renamed into place, so it appears whole or not at all, and never over an
existing record.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic
from pgolf.runinfo import LOG, Run, check_one_experiment, load_runs, read_json
from pgolf.stats import spread

REQUIRED_FILES = ("README.md", "submission.json", "train_gpt.py", "requirements.txt")
SUBMISSION_KEYS = ("name", "author", "github_id", "blurb", "date", "val_loss", "val_bpb", "val_bpb_std", "seeds",
                   "seed_results", "bytes_total", "bytes_code", "hardware", "pytorch_version")
SEED_RESULT_KEYS = ("val_loss", "val_bpb", "artifact_bytes", "steps")
COMPLIANCE_FILE = "compliance.json"
BUNDLE = "train_gpt.py"


def seed_log_name(seed: int) -> str:
    return f"train_seed{seed}.log"


@dataclass(frozen=True)
class RecordMeta:
    """Who submits the record and what it is called."""

    name: str
    author: str
    github_id: str
    blurb: str
    date: str


# ---------------------------------------------------------------- compliance

def compliance_status(report: Any) -> tuple[bool | None, list[str]]:
    """(clean, failed check names) of a compliance report; clean is None when the report's shape is unknown.

    Read shapes: {"clean": bool} (or "ok"/"passed"), {"checks": [{"name", "ok"|"passed"|"pass"}...]} or
    {"checks": {name: bool}}, or a flat {name: bool} map."""
    if not isinstance(report, dict):
        return None, []
    checks = report.get("checks")
    failed: list[str] = []
    if isinstance(checks, list):
        for i, c in enumerate(checks):
            ok = next((c[k] for k in ("ok", "passed", "pass") if isinstance(c, dict) and k in c), None)
            if ok is not True:
                failed.append(str(c.get("name", f"check {i}")) if isinstance(c, dict) else f"check {i}")
    elif isinstance(checks, dict):
        failed = [k for k, v in checks.items() if v is not True]
    else:
        flat = {k: v for k, v in report.items() if isinstance(v, bool) and k not in ("clean", "ok", "passed")}
        failed = [k for k, v in flat.items() if not v]
        checks = flat or None
    verdict = next((report[k] for k in ("clean", "ok", "passed") if isinstance(report.get(k), bool)), None)
    if verdict is None and checks is None:
        return None, []
    return (verdict if verdict is not None else True) and not failed, failed


def run_compliance(run: Run) -> dict[str, Any] | None:
    """The run's compliance summary ({"clean", "failed"}) when it wrote compliance.json, else None."""
    path = run.path / COMPLIANCE_FILE
    if not path.is_file():
        return None
    clean, failed = compliance_status(read_json(path))
    return {"clean": clean, "failed": failed}


# ---------------------------------------------------------------- requirements

def bundle_imports(cfg: Any) -> set[str]:
    """Top-level names of the third-party modules the bundle's modules import (torch included)."""
    from pgolf.bundle import bundle_modules, module_path

    names: set[str] = set()
    for mod in bundle_modules(cfg):
        path = module_path(mod)
        assert path is not None, mod
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "pgolf" and n not in sys.stdlib_module_names and n != "__future__"}


def requirements(cfg: Any, runs: list[Run]) -> str:
    """requirements.txt: torch pinned to the runs' version (local build tag dropped), then every other
    library the bundle imports, pinned to the version the runs recorded or else the one installed here."""
    torch_version = runs[0].torch_version
    recorded = {k.lower(): str(v) for k, v in runs[0].header.get("versions", {}).items()}
    dists = importlib.metadata.packages_distributions()
    lines = [f"# torch build of the runs: {torch_version}", f"torch=={torch_version.split('+')[0]}"]
    for module in sorted(bundle_imports(cfg) - {"torch"}):
        dist = (dists.get(module) or [module])[0]
        version = recorded.get(module) or recorded.get(dist.lower())
        if version is None:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = None
        lines.append(f"{dist}=={version}" if version else dist)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- submission

def track_of(out: Path) -> str | None:
    """"10min_16mb" for a folder under records/track_10min_16mb/, else None."""
    m = re.fullmatch(r"track_(.+)", out.resolve().parent.name)
    return m.group(1) if m else None


def seed_result(run: Run, code_bytes: int) -> dict[str, Any]:
    """One seed's entry of seed_results: its scores, its counted bytes (model + shipped code) and artifact hash."""
    model_bytes = run.count("model_bytes")
    entry: dict[str, Any] = {"val_loss": run.metric("val_loss"), "val_bpb": run.metric("val_bpb"),
                             "artifact_bytes": model_bytes + code_bytes, "model_bytes": model_bytes,
                             "steps": run.count("steps"), "train_seconds": run.metric("train_seconds")}
    sha = run.summary.get("artifact_sha256")
    if not isinstance(sha, str) and run.artifact_path.is_file():
        sha = hashlib.sha256(run.artifact_path.read_bytes()).hexdigest()
    if isinstance(sha, str):
        entry["artifact_sha256"] = sha
    return entry


def build_submission(runs: list[Run], meta: RecordMeta, code: bytes, track: str | None) -> dict[str, Any]:
    """submission.json for the runs with the shipped bundle `code`."""
    import pgolf

    results = {str(r.seed): seed_result(r, len(code)) for r in runs}
    bpb, loss = spread([r["val_bpb"] for r in results.values()]), spread([r["val_loss"] for r in results.values()])
    cfg = runs[0].config_dict
    sub: dict[str, Any] = {
        "name": meta.name, "author": meta.author, "github_id": meta.github_id, "blurb": meta.blurb, "date": meta.date,
        **({"track": track} if track else {}),
        "val_loss": loss.mean, "val_bpb": bpb.mean, "val_bpb_std": bpb.std, "val_loss_std": loss.std,
        "seeds": [r.seed for r in runs], "seed_results": results,
        "bytes_total": max(r["artifact_bytes"] for r in results.values()), "bytes_code": len(code),
        "code_sha256": hashlib.sha256(code).hexdigest(),
        "artifact_max_bytes": cfg.get("budget", {}).get("artifact_max_bytes"),
        "hardware": runs[0].hardware(),
        "pytorch_version": ", ".join(dict.fromkeys(r.torch_version for r in runs)),
        "experiment_hash": runs[0].experiment_hash, "data_fingerprint": runs[0].data_fingerprint,
        "world_size": runs[0].header.get("world_size", 1), "pgolf_version": pgolf.__version__,
    }
    compliance = {str(r.seed): c for r in runs if (c := run_compliance(r)) is not None}
    if compliance:
        sub["compliance"] = compliance
    return sub


# ---------------------------------------------------------------- export

def check_out_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"record folder {out} already exists; records are never overwritten — choose another --out")


def default_date(out: str | Path) -> str:
    """The date a record folder's name starts with (YYYY-MM-DD_Name, the challenge's naming), else today."""
    m = re.match(r"(\d{4}-\d{2}-\d{2})_", Path(out).name)
    return m.group(1) if m else time.strftime("%Y-%m-%d")


def check_date(date: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise UserError(f"--date {date!r} must be YYYY-MM-DD")
    return date


def export_record(run_specs: list[str], out: str | Path, meta: RecordMeta) -> Path:
    """Write the record folder `out` for the finished runs named by `run_specs` (seeds of one experiment)."""
    from pgolf.bundle import write_bundle
    from pgolf.record_readme import render_readme

    out = Path(out)
    check_out_folder(out)
    check_date(meta.date)
    runs = load_runs(run_specs)
    if not runs:
        raise UserError("export-record needs at least one finished run folder")
    check_one_experiment(runs)
    for run in runs:
        if not (run.path / LOG).is_file():
            raise UserError(f"{run.path / LOG} does not exist; a record ships every seed's log")
    cfg = runs[0].config()
    with staging(out) as tmp:
        write_bundle(cfg, tmp / BUNDLE)
        code = (tmp / BUNDLE).read_bytes()
        submission = build_submission(runs, meta, code, track_of(out))
        files = {
            "requirements.txt": requirements(cfg, runs),
            "submission.json": json.dumps(submission, indent=2) + "\n",
            "README.md": render_readme(submission, cfg, runs),
        }
        for name, text in files.items():
            write_bytes_atomic(tmp / name, text.encode("utf-8"))
        for run in runs:
            write_bytes_atomic(tmp / seed_log_name(run.seed), (run.path / LOG).read_bytes())
    return out


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary sibling folder that becomes `out` (absent or empty) when the block succeeds, and is
    removed when it fails, so a record folder appears whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        check_out_folder(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
