"""Reading finished run folders (`header.json`, `summary.json`, `metrics.jsonl`, `log.txt`) for seed
statistics, comparisons, record folders and reports.

A run folder may come from another machine or another pgolf version, so every key is read through
`need`, which turns a missing or mistyped key into one line naming the file and the key. Seeds of one
experiment share the experiment hash (the config hash without seed and run identity,
`pgolf.config.config_hash(cfg, ignore_seed=True)`) and the data fingerprint; `check_one_experiment`
refuses a set of runs that do not.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.errors import UserError

HEADER = "header.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
ARTIFACT = "final_model.int8.ptz"
# Fingerprint entries that say where the data lives rather than what it is.
LOCATION_KEYS = ("dataset_dir",)
_TYPES: dict[str, tuple[type, ...]] = {"number": (int, float), "int": (int,), "str": (str,), "dict": (dict,)}


def need(data: dict[str, Any], key: str, where: Path | str, kind: str = "number") -> Any:
    """`data[key]` checked to be of `kind` (number, int, str, dict); a one-line UserError otherwise."""
    if key not in data:
        raise UserError(f"{where} has no key {key!r}; it was written by another pgolf version or the run did not finish")
    value = data[key]
    ok = isinstance(value, _TYPES[kind]) and not isinstance(value, bool)
    if ok and kind == "number":
        ok = math.isfinite(value)
    if not ok:
        raise UserError(f"{where} key {key!r} is {value!r:.60}, expected a {'finite number' if kind == 'number' else kind}")
    return value


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; a missing, unreadable or non-object file is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; is {path.parent} a finished run folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class Run:
    """One finished run: its folder and the header and summary it wrote."""

    path: Path
    header: dict[str, Any]
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return need(self.header, "seed", self.path / HEADER, "int")

    @property
    def experiment_hash(self) -> str:
        return need(self.header, "experiment_hash", self.path / HEADER, "str")

    @property
    def data_fingerprint(self) -> dict[str, Any]:
        """What the data is (tokenizer hash, shard and token counts), without where it lives."""
        data = need(self.header, "data", self.path / HEADER, "dict")
        return {k: v for k, v in sorted(data.items()) if k not in LOCATION_KEYS}

    @property
    def config_dict(self) -> dict[str, Any]:
        return need(self.header, "config", self.path / HEADER, "dict")

    @property
    def name(self) -> str:
        return str(self.config_dict.get("name", self.label))

    def metric(self, key: str) -> float:
        """A number from summary.json (val_bpb, val_loss, train_seconds, ...)."""
        return float(need(self.summary, key, self.path / SUMMARY))

    def count(self, key: str) -> int:
        """An integer from summary.json (model_bytes, steps, ...)."""
        return int(need(self.summary, key, self.path / SUMMARY, "int"))

    @property
    def torch_version(self) -> str:
        versions = need(self.header, "versions", self.path / HEADER, "dict")
        return str(need(versions, "torch", f"{self.path / HEADER} versions", "str"))

    @property
    def artifact_path(self) -> Path:
        """The run's artifact file in its folder (summary.json may name a path on another machine)."""
        named = self.summary.get("artifact")
        return self.path / (Path(named).name if isinstance(named, str) and named else ARTIFACT)

    def config(self) -> Any:
        """The run's resolved RunConfig, read back strictly from header.json."""
        from pgolf.config import ConfigError
        from pgolf.flags import run_config_from_dict

        try:
            return run_config_from_dict(self.config_dict, where=f"{self.path / HEADER} config")
        except ConfigError as exc:
            raise UserError(str(exc)) from None

    def hardware(self) -> str:
        """What the run ran on, as records write it: "8xNVIDIA H100 80GB HBM3" or "1xCPU <model> (N threads)"."""
        hw = need(self.header, "hardware", self.path / HEADER, "dict")
        world = self.header.get("world_size", 1)
        devices = hw.get("cuda_devices") or []
        if devices:
            return f"{world}x{devices[0]}"
        return f"{world}xCPU {hw.get('cpu', 'unknown')} ({hw.get('torch_threads', '?')} threads)"


def load_run(path: str | Path) -> Run:
    """A finished run folder; UserError naming the file when its header or summary is missing."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder {path} does not exist")
    return Run(path=path, header=read_json(path / HEADER), summary=read_json(path / SUMMARY))


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / HEADER).is_file()


def expand_run_paths(spec: str) -> list[Path]:
    """Run folders named by `spec`: comma-separated items, each a run folder, a folder of run folders, or a
    glob pattern. Order follows the spec (folders of runs and globs sorted by name); duplicates are dropped."""
    found: list[Path] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        matches = sorted(Path(p) for p in glob.glob(item)) if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise UserError(f"{item!r} matches no run folder")
        for m in matches:
            if is_run_folder(m):
                found.append(m)
            elif m.is_dir() and (inner := sorted(p for p in m.iterdir() if is_run_folder(p))):
                found += inner
            else:
                raise UserError(f"{m} is neither a run folder (no {HEADER}) nor a folder of run folders")
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def load_runs(specs: list[str]) -> list[Run]:
    """Every run named by the specs (see expand_run_paths), loaded."""
    return [load_run(p) for spec in specs for p in expand_run_paths(spec)]


def check_one_experiment(runs: list[Run], side: str = "") -> None:
    """The runs are seeds of one experiment: the same experiment hash and data, distinct seeds."""
    where = f" ({side})" if side else ""
    first = runs[0]
    for other in runs[1:]:
        if other.experiment_hash != first.experiment_hash:
            raise UserError(f"runs {first.path} and {other.path}{where} are not seeds of one experiment: experiment hash "
                            f"{first.experiment_hash} != {other.experiment_hash} (their configs differ beyond the seed)")
        if other.data_fingerprint != first.data_fingerprint:
            diff = sorted(k for k in {*first.data_fingerprint, *other.data_fingerprint}
                          if first.data_fingerprint.get(k) != other.data_fingerprint.get(k))
            raise UserError(f"runs {first.path} and {other.path}{where} are not seeds of one experiment: their data "
                            f"differs ({', '.join(diff)})")
    seen: dict[int, Path] = {}
    for run in runs:
        if run.seed in seen:
            raise UserError(f"runs {seen[run.seed]} and {run.path}{where} both have seed {run.seed}; seeds of one "
                            f"experiment must differ")
        seen[run.seed] = run.path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Events of a metrics.jsonl; a line cut short by a crash (the last one) is skipped, not fatal."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            events.append(row)
    return events
