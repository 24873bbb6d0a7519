"""`pgolf verify RECORD_DIR`: what a reviewer checks in a record folder, one line per check.

Checks: the required files and submission keys; the mean and std agree with the per-seed results and
every seed log states the same scores; bytes (bytes_code is the size of train_gpt.py, each seed's
artifact bytes are its logged model bytes plus that, bytes_total is the largest and within the
budget); every seed log names the shipped code's sha256 and size, the same experiment hash and the
same data; the bundle loads and answers --help; compliance reports are clean; and, with `--replay`,
scoring a seed's artifact again reproduces its val_bpb within a tolerance.

Each check is PASS, FAIL or SKIP (nothing to check, e.g. no compliance report); the verb exits 0 when
nothing fails and 2 otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.errors import UserError
from pgolf.logscan import LogFacts, scan_log_file
from pgolf.record import BUNDLE, REQUIRED_FILES, SEED_RESULT_KEYS, SUBMISSION_KEYS, seed_log_name
from pgolf.runinfo import LOCATION_KEYS, is_run_folder, load_run
from pgolf.stats import spread


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    reason: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.reason}"


def _result(name: str, problems: list[str], ok: str) -> Check:
    return Check(name, "FAIL", "; ".join(problems)) if problems else Check(name, "PASS", ok)


def check_files(folder: Path, sub: dict[str, Any] | None) -> Check:
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    seeds = sub.get("seeds", []) if sub else []
    missing += [seed_log_name(s) for s in seeds if not (folder / seed_log_name(s)).is_file()]
    return _result("files", [f"missing {', '.join(missing)}"] if missing else [],
                   f"{', '.join(REQUIRED_FILES)} and {len(seeds)} seed log(s)")


def check_keys(sub: dict[str, Any]) -> Check:
    problems = [f"submission.json lacks {k!r}" for k in SUBMISSION_KEYS if k not in sub]
    for k in ("name", "author", "github_id", "date", "hardware", "pytorch_version"):
        if k in sub and (not isinstance(sub[k], str) or not sub[k]):
            problems.append(f"{k} is empty or not a string")
    for k in ("val_loss", "val_bpb", "bytes_total", "bytes_code"):
        if k in sub and not _is_number(sub[k]):
            problems.append(f"{k} is not a number")
    seeds, results = sub.get("seeds"), sub.get("seed_results")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        problems.append("seeds is not a non-empty list of integers")
    elif not isinstance(results, dict) or sorted(results) != sorted(map(str, seeds)):
        problems.append("seed_results does not have one entry per seed")
    else:
        for s, r in results.items():
            lacking = [k for k in (*SEED_RESULT_KEYS, "model_bytes") if not _is_number((r or {}).get(k))]
            if lacking:
                problems.append(f"seed_results[{s}] lacks {', '.join(lacking)}")
    return _result("keys", problems, f"{len(SUBMISSION_KEYS)} required keys, {len(seeds or [])} seed results")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_scores(sub: dict[str, Any], logs: dict[int, LogFacts]) -> Check:
    results = [sub["seed_results"][str(s)] for s in sub["seeds"]]
    problems = []
    for key, std_key in (("val_bpb", "val_bpb_std"), ("val_loss", "val_loss_std")):
        s = spread([r[key] for r in results])
        if not math.isclose(sub[key], s.mean, rel_tol=1e-12, abs_tol=1e-12):
            problems.append(f"{key} {sub[key]} is not the mean of the seeds ({s.mean})")
        if std_key in sub and not _same_std(sub[std_key], s.std):
            problems.append(f"{std_key} {sub[std_key]} is not the sample std of the seeds ({s.std})")
    for seed, r in zip(sub["seeds"], results):
        facts = logs[seed]
        for key in ("val_bpb", "val_loss"):
            printed = getattr(facts, key)
            if printed is None:
                problems.append(f"{seed_log_name(seed)} states no final {key}")
            elif not printed.matches(r[key]):
                problems.append(f"{seed_log_name(seed)} says {key} {printed.value}, seed_results says {r[key]}")
    return _result("scores", problems, f"val_bpb {sub['val_bpb']:.6f} is the mean of {len(results)} seeds, "
                                       f"each as its log states")


def _same_std(stated: Any, actual: float | None) -> bool:
    if actual is None:
        return stated is None or stated == 0
    return _is_number(stated) and math.isclose(stated, actual, rel_tol=1e-9, abs_tol=1e-12)


def check_bytes(folder: Path, sub: dict[str, Any], logs: dict[int, LogFacts]) -> Check:
    size = (folder / BUNDLE).stat().st_size
    problems = [] if sub["bytes_code"] == size else [f"bytes_code {sub['bytes_code']:,} != size of {BUNDLE} {size:,}"]
    totals = []
    for seed in sub["seeds"]:
        r = sub["seed_results"][str(seed)]
        logged = logs[seed].model_bytes
        if logged is None:
            problems.append(f"{seed_log_name(seed)} states no model bytes")
        elif logged != r["model_bytes"]:
            problems.append(f"seed {seed}: log says model {logged:,} bytes, seed_results says {r['model_bytes']:,}")
        if r["artifact_bytes"] != r["model_bytes"] + size:
            problems.append(f"seed {seed}: artifact_bytes {r['artifact_bytes']:,} != model {r['model_bytes']:,} + "
                            f"code {size:,}")
        totals.append(r["model_bytes"] + size)
    if totals and sub["bytes_total"] != max(totals):
        problems.append(f"bytes_total {sub['bytes_total']:,} != largest model + code {max(totals):,}")
    budget = sub.get("artifact_max_bytes")
    if _is_number(budget) and totals and max(totals) > budget:
        problems.append(f"{max(totals):,} bytes exceed the budget of {budget:,}")
    return _result("bytes", problems, f"bytes_total {sub['bytes_total']:,} = model + {BUNDLE} {size:,} for every seed"
                   + (f", within {budget:,}" if _is_number(budget) else ""))


def check_code_hash(folder: Path, sub: dict[str, Any], logs: dict[int, LogFacts]) -> Check:
    data = (folder / BUNDLE).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    problems = [] if sub.get("code_sha256") == sha else [f"submission code_sha256 is not the sha256 of {BUNDLE}"]
    for seed, facts in logs.items():
        if facts.code_sha256 is None:
            problems.append(f"{seed_log_name(seed)} has no 'code_sha256 <hex> bytes <n>' line")
        elif facts.code_sha256 != sha or facts.code_bytes != len(data):
            problems.append(f"{seed_log_name(seed)} ran code {facts.code_sha256[:12]} ({facts.code_bytes:,} bytes), "
                            f"not the shipped {sha[:12]} ({len(data):,} bytes)")
    return _result("code hash", problems, f"every seed log ran {BUNDLE} sha256 {sha[:16]}")


def check_experiment(sub: dict[str, Any], logs: dict[int, LogFacts]) -> Check:
    want = sub.get("experiment_hash")
    problems = [] if isinstance(want, str) else ["submission.json has no experiment_hash"]
    for seed, facts in logs.items():
        if facts.experiment_hash is None:
            problems.append(f"{seed_log_name(seed)} names no experiment hash")
        elif facts.experiment_hash != want:
            problems.append(f"{seed_log_name(seed)} is experiment {facts.experiment_hash}, not {want}")
    return _result("experiment hash", problems, f"every seed log is experiment {want}")


def check_data(sub: dict[str, Any], logs: dict[int, LogFacts]) -> Check:
    want = {k: str(v) for k, v in (sub.get("data_fingerprint") or {}).items() if k not in LOCATION_KEYS}
    problems = [] if want else ["submission.json has no data_fingerprint"]
    for seed, facts in logs.items():
        got = {k: v for k, v in facts.data.items() if k not in LOCATION_KEYS}
        if not got:
            problems.append(f"{seed_log_name(seed)} has no data line")
        elif got != want:
            diff = sorted(k for k in {*got, *want} if got.get(k) != want.get(k))
            problems.append(f"{seed_log_name(seed)} differs in {', '.join(diff)}")
    return _result("data fingerprint", problems, ", ".join(f"{k} {v}" for k, v in want.items()))


def env_without_package(package: str) -> dict[str, str]:
    """This process's environment less the PYTHONPATH entries that hold `package` (other entries, such as
    a folder the dependencies were installed into with pip --target, stay)."""
    env = dict(os.environ)
    kept = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / package).is_dir()]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def check_bundle_loads(folder: Path) -> Check:
    """The shipped script runs its loader and answers --help with only itself on the path."""
    env = env_without_package("pgolf")
    try:
        proc = subprocess.run([sys.executable, BUNDLE, "--help"], cwd=folder, capture_output=True, text=True,
                              timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return Check("bundle loads", "FAIL", f"{BUNDLE} --help did not finish in 300 s")
    if proc.returncode != 0 or "usage" not in proc.stdout:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("bundle loads", "FAIL", f"{BUNDLE} --help exited {proc.returncode}: {tail}")
    return Check("bundle loads", "PASS", f"{BUNDLE} unpacks its modules and answers --help")


def check_compliance(sub: dict[str, Any]) -> Check:
    reports = sub.get("compliance")
    if not reports:
        return Check("compliance", "SKIP", "the runs wrote no compliance report")
    bad = [f"seed {s}: " + (", ".join(c.get("failed") or []) or "not clean") for s, c in reports.items()
           if not (isinstance(c, dict) and c.get("clean") is True)]
    missing = [str(s) for s in sub["seeds"] if str(s) not in reports]
    problems = bad + ([f"no report for seed(s) {', '.join(missing)}"] if missing else [])
    return _result("compliance", problems, f"clean for {len(reports)} seed(s)")


def replay(sub: dict[str, Any], target: str, tolerance: float, overrides: list[str]) -> Check:
    """Score an artifact (or a run folder's artifact) again and compare with the seed it belongs to."""
    from pgolf import dist
    from pgolf.artifact import read_artifact
    from pgolf.config import ConfigError
    from pgolf.flags import apply_overrides, run_config_from_dict
    from pgolf.scoring import eval_artifact

    path = Path(target)
    if is_run_folder(path):
        path = load_run(path).artifact_path
    name = f"replay {target}"
    if not path.is_file():
        return Check(name, "FAIL", f"no artifact at {path}")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    seed = next((s for s, r in sub["seed_results"].items() if r.get("artifact_sha256") == sha), None)
    if seed is None:
        return Check(name, "FAIL", f"{path.name} (sha256 {sha[:12]}) is the artifact of none of the record's seeds")
    want = sub["seed_results"][seed]
    try:
        cfg = apply_overrides(run_config_from_dict(read_artifact(path).run_config, "artifact run_config"), overrides)
        with contextlib.redirect_stdout(io.StringIO()):
            got = eval_artifact(str(path), cfg, dist.init())
    except (UserError, ConfigError) as exc:
        return Check(name, "FAIL", str(exc))
    finally:
        dist.shutdown()
    delta = got["val_bpb"] - want["val_bpb"]
    problems = [f"val_bpb {got['val_bpb']:.8f} vs logged {want['val_bpb']:.8f} (off by {delta:+.2e} > {tolerance:g})"
                ] if abs(delta) > tolerance else []
    if path.stat().st_size != want["model_bytes"]:
        problems.append(f"artifact is {path.stat().st_size:,} bytes, seed_results says {want['model_bytes']:,}")
    return _result(name, problems, f"seed {seed}: val_bpb {got['val_bpb']:.8f} reproduces {want['val_bpb']:.8f} "
                                   f"(|diff| {abs(delta):.1e} <= {tolerance:g})")


def verify_record(folder: str | Path, replays: Sequence[str] = (), tolerance: float = 1e-4,
                  overrides: Sequence[str] = ()) -> list[Check]:
    """Every check of a record folder, in order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"record folder {folder} does not exist")
    try:
        sub = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [check_files(folder, None), Check("keys", "FAIL", f"submission.json is not readable JSON ({exc})")]
    if not isinstance(sub, dict):
        return [check_files(folder, None), Check("keys", "FAIL", "submission.json does not hold an object")]
    checks = [check_files(folder, sub), check_keys(sub)]
    if any(c.status == "FAIL" for c in checks):
        return checks
    logs = {s: scan_log_file(folder / seed_log_name(s)) for s in sub["seeds"]}
    checks += [check_scores(sub, logs), check_bytes(folder, sub, logs), check_code_hash(folder, sub, logs),
               check_experiment(sub, logs), check_data(sub, logs), check_bundle_loads(folder), check_compliance(sub)]
    checks += [replay(sub, t, tolerance, list(overrides)) for t in replays]
    if not replays:
        checks.append(Check("replay", "SKIP", "no --replay RUN_DIR_OR_ARTIFACT given"))
    return checks
