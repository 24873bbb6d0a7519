"""Rank-0 run logging: a self-describing header, one fixed-format line per interval, JSONL metrics,
and a progress bar when stdout is a terminal.

Every file is appended and flushed line by line, so a crash loses at most the line being written.
Non-main ranks get a logger whose methods do nothing, so call sites never branch on rank.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from pgolf import __version__
from pgolf.config import RunConfig, config_hash, config_to_dict
from pgolf.dist import native_bf16
from pgolf.data.shards import count_tokens, list_shards
from pgolf.fileio import write_bytes_atomic
from pgolf.tokenizer import file_sha256


def git_commit(cwd: Path | None = None) -> str:
    """The checkout's commit (with '-dirty' if modified), or 'unknown' outside a git checkout."""
    where = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_info() -> dict[str, Any]:
    """What the run ran on: CPU, threads torch uses, and each CUDA device."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def versions() -> dict[str, str]:
    """Versions of the libraries that can change the numbers."""
    import sentencepiece

    return {
        "pgolf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sentencepiece": sentencepiece.__version__,
    }


def run_header(cfg: RunConfig, *, world_size: int, data_fingerprint: dict[str, Any], command: str,
               run_id: str = "") -> dict[str, Any]:
    """Everything needed to know what a run was: config and hash, versions, hardware, commit, seed, data."""
    return {
        "run_id": run_id,
        "command": command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_hash": config_hash(cfg),
        "experiment_hash": config_hash(cfg, ignore_seed=True),
        "seed": cfg.train.seed,
        "world_size": world_size,
        "git_commit": git_commit(),
        "versions": versions(),
        "hardware": hardware_info(),
        "data": data_fingerprint,
        "config": config_to_dict(cfg),
    }


def data_fingerprint(run: RunConfig) -> dict[str, Any]:
    """What the run header records about its data: tokenizer hash, shard counts, token counts."""
    train = list_shards(run.dataset_dir, "train")
    val = list_shards(run.dataset_dir, "val")
    return {
        "dataset_dir": str(run.dataset_dir),
        "tokenizer_sha256": file_sha256(run.tokenizer_path)[:16],
        "train_shards": len(train),
        "val_shards": len(val),
        "train_tokens": count_tokens(train),
        "val_tokens": count_tokens(val),
    }


def format_duration(seconds: float) -> str:
    """'42.0 s' under two minutes, '7.9 m' under two hours, else hours."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} m"
    return f"{seconds / 3600:.2f} h"


def format_rate(tokens_per_s: float) -> str:
    """Tokens per second with a k/M suffix."""
    if tokens_per_s >= 1e6:
        return f"{tokens_per_s / 1e6:.2f}M tok/s"
    if tokens_per_s >= 1e3:
        return f"{tokens_per_s / 1e3:.1f}k tok/s"
    return f"{tokens_per_s:.0f} tok/s"


def format_step_line(*, step: int, total_steps: int, loss: float, lr_mul: float, step_ms: float,
                     tokens_per_s: float, train_s: float, eta_s: float) -> str:
    """The one fixed-format training line, with units."""
    return (f"step {step}/{total_steps} | loss {loss:.4f} | lr {lr_mul:.3f} | {step_ms:.1f} ms | "
            f"{format_rate(tokens_per_s)} | {train_s:.1f} s | eta {format_duration(eta_s)}")


class RunLogger:
    """Writes `log.txt` (human lines), `metrics.jsonl` (one JSON object per event) and `header.json`
    into the run folder, and echoes lines to stdout. Only the main rank writes anything."""

    def __init__(self, run_dir: Path | None, *, is_main: bool = True, echo: bool = True,
                 stream: TextIO | None = None) -> None:
        self.enabled = is_main
        self.echo = echo
        self.stream = stream or sys.stdout
        self.run_dir = run_dir
        self._bar: Any = None
        if self.enabled and run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)

    def _append(self, name: str, text: str) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / name, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()

    def line(self, text: str, echo: bool = True) -> None:
        """A human-readable log line (stdout and log.txt; log.txt only with echo=False, as for the
        challenge-format lines that reviewers grep, which would repeat pgolf's own on the terminal)."""
        if not self.enabled:
            return
        if self.echo and echo:
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)
        self._append("log.txt", text + "\n")

    def metrics(self, event: str, **values: Any) -> None:
        """One JSON object in metrics.jsonl, tagged with the event name and wall time."""
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **values}
        self._append("metrics.jsonl", json.dumps(record, sort_keys=True, default=str) + "\n")

    def header(self, header: dict[str, Any]) -> None:
        """Write header.json and echo a compact summary of it."""
        if not self.enabled:
            return
        if self.run_dir is not None:
            write_json_atomic(self.run_dir / "header.json", header)
        data = header.get("data", {})
        self.line(f"pgolf {header['versions']['pgolf']} | config {header['config_hash']} | "
                  f"experiment {header['experiment_hash']} | seed {header['seed']} | "
                  f"world {header['world_size']} | commit {header['git_commit'][:12]}")
        self.line(f"hardware {header['hardware']['cpu']} | torch {header['versions']['torch']} | "
                  f"threads {header['hardware']['torch_threads']}")
        if data:
            self.line("data " + " | ".join(f"{k} {v}" for k, v in data.items()))
        self.metrics("header", **header)

    def start_progress(self, total: int, desc: str) -> None:
        """A tqdm bar on rank 0 when stdout is a terminal; a no-op otherwise."""
        if not (self.enabled and self.echo and self.stream.isatty()):
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, dynamic_ncols=True)

    def advance_progress(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, then rename it into place."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    # ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
