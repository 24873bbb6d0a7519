"""Fuzzing the artifact loader (issue 10): mutants of real tiny artifacts, each read by `read_artifact` in a
worker process under a per-mutant deadline and memory watch, classified and counted; prints one JSON object.

Mutants come in categories (CATEGORIES), named by what the attacker recomputed after the change:

  stored_*  the file as stored, both checksums intact: bit flips anywhere, truncations, extensions
  outer_*   only the outer (compressed-payload) sha256 recomputed, the content digest left as written:
            codec-stream flips (bits flipped inside the COMPRESSED payload of a zlib/zstd/brotli/xz file)
            and flips, cuts or extensions of the uncompressed payload
  liar_*    both digests recomputed (a careful liar): bit flips, cuts, metadata type lies, dtype and shape
            lies, other plan lies, model-config lies, NaN/inf/out-of-range values
  bomb_*    decompression bombs: declaring more than the bound, declaring less than they expand to, and
            a careful liar declaring exactly its size under the bound

Every outcome must be one of:
  clean_error     a one-line `pgolf.errors.UserError` whose message names the file;
  identical_load  a load whose every weight is bit-identical (dtype, shape, bytes) to the original's;
  checked_load    careful liars only: a load whose names, shapes and dtypes are exactly those of the model the
                  stored config describes and whose values are all finite.
Anything else is counted in `anything_else` (which must be 0): another exception type, a message over one
line or not naming the file, different weights from a mutant that did not recompute the content digest, a
malformed load, a worker past the deadline (a hang) or killed (a crash), or a mutant whose loading peaked
over the memory bounds (the worker's peak RSS, and tracemalloc's peak of Python-side buffers).
`errors_via_fallback` counts the clean errors that came from the loader's last-resort handler ("malformed
(TypeError: ...)"): one line still, but a check the loader forgot, so they are listed in `fallback_examples`.

Why `checked_load` is the right contract for careful liars: with both digests recomputed the file is byte for
byte one that some exporter could have written. The format has no signature, and any code within its bit range
and any finite positive scale is a legal weight, so no loader can tell "other weights" from "tampered weights".
What the loader can and must promise is that what it returns is a well-formed model for the config it stores:
the exact state-dict names, shapes and dtypes (so building and loading the model cannot fail later), finite
values, and bounded time and memory on the way.

    python benchmarks/fuzz_artifact.py [--count 10000] [--seed 0] [--out docs/results/fuzz.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch
from fuzz_mutants import CATEGORIES, Bombs, Context, Original, build_originals, make_mutant

from pgolf import artifact
from pgolf.artifact import read_artifact
from pgolf.config import model_config_from_dict
from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic

RSS_BOUND_BYTES = 1_500_000_000
# Python-side buffers of one load: the loader holds at most its decompression cap (max_raw_bytes + 1) twice
# (a codec's output and its joined or trimmed copy), plus the file and small change.
PYTHON_BOUND_BYTES = 2 * artifact.DEFAULT_MAX_RAW_BYTES + 64 * 2**20
DEADLINE_SECONDS = 30.0
OUTCOMES = ("clean_error", "identical_load", "checked_load", "anything_else")


# ---------------------------------------------------------------- worker: load and classify

def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)) for k in a)


def well_formed(loaded: artifact.LoadedArtifact) -> str:
    """'' when the state is exactly what the stored config's model holds, with finite values; else why not."""
    from pgolf.model.gpt import GPT

    cfg = model_config_from_dict(loaded.model_config)
    with torch.device("meta"):
        model = GPT(cfg)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in loaded.state.items()}
    if got != expected:
        return "names, shapes or dtypes differ from the stored config's model"
    bad = [k for k, v in loaded.state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return f"non-finite values in {bad[0]}" if bad else ""


def classify(path: Path, reference: artifact.LoadedArtifact, liar: bool) -> tuple[str, str]:
    """(outcome, detail) of loading one mutant; an identical load has the original's weights and model config."""
    try:
        loaded = read_artifact(path)
    except UserError as exc:
        message = str(exc)
        if "\n" in message or str(path) not in message or "MemoryError" in message:
            return "anything_else", f"bad error message: {message[:300]}"
        # The loader's last-resort handler turns a check it forgot into one line; the fuzz reports those apart.
        return "clean_error", f"fallback: {message[:300]}" if "malformed (" in message else ""
    except BaseException as exc:  # noqa: BLE001 - every other exception is the finding
        return "anything_else", f"{type(exc).__name__}: {str(exc)[:300]}"
    if same_state(loaded.state, reference.state) and loaded.model_config == reference.model_config:
        return "identical_load", ""
    if not liar:
        return "anything_else", "loaded different weights without recomputing the content digest"
    why = well_formed(loaded)
    return ("checked_load", "") if not why else ("anything_else", why)


def worker_main(originals: list[str]) -> None:
    """Read tasks (JSON lines: path, origin, liar) from stdin; answer each with one JSON line."""
    references = [read_artifact(p) for p in originals]
    tracemalloc.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        outcome, detail = classify(Path(task["path"]), references[task["origin"]], task["liar"])
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - before
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        print(json.dumps({"outcome": outcome, "detail": detail, "seconds": seconds, "python_peak": peak, "rss": rss}),
              flush=True)


# ---------------------------------------------------------------- parent: run with deadlines

class Worker:
    """A worker process loading mutants one at a time; a line not answered by the deadline is a hang."""

    def __init__(self, originals: list[Path]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", *map(str, originals)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buffer = b""
        if self.ask(None, 300.0) is None:
            self.close()
            raise RuntimeError("the fuzz worker did not start")

    def ask(self, task: dict[str, Any] | None, deadline: float) -> dict[str, Any] | None:
        """Send a task (None: just read) and wait for its answer; None when the deadline passes or it dies."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            if task is not None:
                self.proc.stdin.write((json.dumps(task) + "\n").encode())
                self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        end = time.monotonic() + deadline
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def empty_counts() -> dict[str, int]:
    return {"tried": 0, **{k: 0 for k in OUTCOMES}}


def run_fuzz(originals: list[Path], count: int, *, seed: int = 0, bomb_bytes: int = 64 << 20,
             deadline: float = DEADLINE_SECONDS, workdir: Path | None = None) -> dict[str, Any]:
    """Load `count` mutants of `originals` (categories in turn) and count the outcomes."""
    ctx = Context(originals=[Original.read(p) for p in originals], bombs=Bombs.build(bomb_bytes))
    own = tempfile.TemporaryDirectory() if workdir is None else None
    folder = Path(own.name) if own else Path(workdir)  # type: ignore[arg-type]
    totals, by_category = empty_counts(), {name: empty_counts() for name in CATEGORIES}
    examples: list[dict[str, Any]] = []
    fallbacks: list[dict[str, Any]] = []
    stats = {"max_seconds": 0.0, "peak_rss_bytes": 0, "peak_python_bytes": 0, "errors_via_fallback": 0,
             "workers_started": 1}
    worker = Worker(originals)
    try:
        for index in range(count):
            mutant = make_mutant(ctx, seed, index)
            path = folder / "mutant.ptz"
            path.write_bytes(mutant.blob)
            t0 = time.monotonic()
            answer = worker.ask({"path": str(path), "origin": mutant.origin, "liar": mutant.liar}, deadline)
            if answer is None:
                hung = worker.proc.poll() is None
                answer = {"outcome": "anything_else", "detail": "past the deadline (hang)" if hung else "worker died",
                          "seconds": time.monotonic() - t0, "python_peak": 0, "rss": 0}
                worker.close()
                worker = Worker(originals)
                stats["workers_started"] += 1
            outcome, detail = answer["outcome"], answer["detail"]
            if answer["rss"] > RSS_BOUND_BYTES or answer["python_peak"] > PYTHON_BOUND_BYTES:
                outcome, detail = "anything_else", f"memory over the bound (rss {answer['rss']:,}, " \
                                                   f"python {answer['python_peak']:,})"
            if detail.startswith("fallback") and outcome == "clean_error":
                stats["errors_via_fallback"] += 1
                if len(fallbacks) < 20:
                    fallbacks.append({"index": index, "category": mutant.category, "detail": detail})
            stats["max_seconds"] = max(stats["max_seconds"], answer["seconds"])
            stats["peak_rss_bytes"] = max(stats["peak_rss_bytes"], answer["rss"])
            stats["peak_python_bytes"] = max(stats["peak_python_bytes"], answer["python_peak"])
            for counts in (totals, by_category[mutant.category]):
                counts["tried"] += 1
                counts[outcome] += 1
            if outcome == "anything_else" and len(examples) < 20:
                examples.append({"index": index, "category": mutant.category, "detail": detail})
    finally:
        worker.close()
        if own:
            own.cleanup()
    return {**totals, **stats, "by_category": by_category, "anything_else_examples": examples,
            "fallback_examples": fallbacks, "seed": seed,
            "bomb_bytes": bomb_bytes, "deadline_seconds": deadline, "rss_bound_bytes": RSS_BOUND_BYTES,
            "python_bound_bytes": PYTHON_BOUND_BYTES, "num_originals": len(originals)}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--worker"]:
        worker_main(args[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutants to try (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bomb-mib", type=int, default=255, help="size the bombs expand to, MiB (default 255: "
                                                                  "exact bombs just under the 256 MiB bound)")
    parser.add_argument("--deadline", type=float, default=DEADLINE_SECONDS, help="seconds one load may take")
    parser.add_argument("--out", default="", help="also write the JSON object to this path")
    ns = parser.parse_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        originals = build_originals(Path(tmp))
        result = run_fuzz(originals, ns.count, seed=ns.seed, bomb_bytes=ns.bomb_mib << 20, deadline=ns.deadline,
                          workdir=Path(tmp))
    text = json.dumps(result, indent=1)
    print(text)
    if ns.out:
        write_bytes_atomic(ns.out, (text + "\n").encode())
    return 0 if result["anything_else"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
