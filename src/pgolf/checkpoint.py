"""Training checkpoints (not the artifact): the whole training state in one safetensors file.

A state is any nesting of dicts, lists and tuples whose leaves are tensors, numbers, strings, bools,
None or torch dtypes (model and optimiser state dicts, loader positions, component states, RNG
states). `flatten_state` splits it into named tensors and a JSON skeleton in which every tensor is
replaced by its name; the skeleton travels in the safetensors header's metadata, so one file holds
everything and one atomic rename (`pgolf.fileio.write_bytes_atomic`) commits it: a crash leaves the
previous checkpoint or the new one, never half of one. Loading parses JSON and safetensors only
(no pickle, no torch.load), and rebuilds exactly what was saved (int dict keys, tuples, dtypes, NaN).
The random generators' states in it come from `pgolf.rng`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import torch

from pgolf.config import SECTIONS
from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic
from pgolf.flags import with_added_fields

CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "pgolf-train-checkpoint-1"
_META_KEY = "pgolf_checkpoint"

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.uint8, torch.bool)}


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        # Each tensor is copied to the host; a checkpoint never shares storage with live training state.
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": path}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        return {"$items": [[_encode(k, f"{path}.k{i}", tensors), _encode(v, f"{path}.{i}", tensors)]
                           for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(named host tensors, JSON-ready skeleton) of a nested training state."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, "s", tensors)
    return tensors, skeleton


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The nested state `flatten_state` split, rebuilt (tensors on the host)."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "$tensor" in skeleton:
        return tensors[skeleton["$tensor"]]
    if "$dtype" in skeleton:
        return _DTYPES[skeleton["$dtype"]]
    if "$float" in skeleton:
        return float(skeleton["$float"])
    if "$tuple" in skeleton:
        return tuple(unflatten_state(v, tensors) for v in skeleton["$tuple"])
    if "$items" in skeleton:
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["$items"]}
    return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}


def save_checkpoint(path: Path, state: Any, meta: dict[str, Any]) -> int:
    """Write `state` and the JSON `meta` (step, seconds, config...) to one file atomically; returns its bytes."""
    tensors, skeleton = flatten_state(state)
    return write_flat_checkpoint(path, tensors, skeleton, meta)


def write_flat_checkpoint(path: Path, tensors: dict[str, torch.Tensor], skeleton: Any, meta: dict[str, Any]) -> int:
    """Write a state already split by `flatten_state` (host tensors; safe to run in a background thread)."""
    from safetensors.torch import save

    # Key order is kept: it is part of the state (dict order of state dicts and of component entries).
    header = json.dumps({"format": CHECKPOINT_FORMAT, "meta": meta, "state": skeleton}, allow_nan=False)
    blob = save(tensors, metadata={_META_KEY: header})
    write_bytes_atomic(path, blob)
    return len(blob)


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its tensors."""
    return _read_header(path)["meta"]


def _read_header(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; checkpoints are written when --train.checkpoint_every_seconds > 0")
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(_META_KEY)
        header = json.loads(text) if text else None
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is damaged") from None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a pgolf training checkpoint ({CHECKPOINT_FORMAT})")
    return header


def load_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of a checkpoint file; tensors are on the host."""
    from safetensors.torch import load_file

    header = _read_header(path)
    tensors = load_file(str(path))
    try:
        return unflatten_state(header["state"], tensors), header["meta"]
    except KeyError as exc:
        raise UserError(f"checkpoint {path} names tensor {exc} that it does not hold; it is damaged") from None


# Fields that name where a run lives, not what it computes: a resumed run may be moved or renamed.
_PLACE_FIELDS = ("run_id", "out_dir")


def config_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first `section.field` whose value differs between two config dicts (ignoring the run's
    id and folder), as 'flag: stored -> current'; None when they agree."""
    # Compare as JSON sees them (a tuple field reads back as a list).
    stored, current = json.loads(json.dumps(stored)), json.loads(json.dumps(current))
    for name, cls in SECTIONS.items():  # a field added since the checkpoint was written reads as its old value
        if isinstance(stored.get(name), dict):
            stored[name] = with_added_fields(cls, stored[name])
    keys = sorted((set(stored) | set(current)) - set(_PLACE_FIELDS))
    for key in keys:
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    return f"{key}.{sub}: {a.get(sub, '(absent)')!r} -> {b.get(sub, '(absent)')!r}"
        elif a != b:
            return f"{key}: {a!r} -> {b!r}"
    return None


class Checkpointer:
    """When and where a run's training state is written: every `every_s` training seconds, by rank 0,
    into RUN_DIR/checkpoint.safetensors (all ranks hold the same state: see `pgolf.optim.muon`).

    Only the copy of the state to the host stalls training; serialising and writing the file (and its
    fsync) run in a background thread, one write at a time. A crash mid-write leaves the previous
    checkpoint in place (the file is renamed into place only once complete)."""

    def __init__(self, run_dir: Path | None, every_s: float, is_main: bool) -> None:
        if every_s > 0 and run_dir is None:
            raise ValueError("checkpoints need a run folder (a RunLogger with a run_dir)")
        self.path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
        self.every_s = every_s
        self.is_main = is_main
        self.last_s = 0.0
        self.last_step: int | None = None  # the last checkpoint known to be complete on disk
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def due(self, train_s: float) -> bool:
        return self.enabled and train_s - self.last_s >= self.every_s

    def discard_stale(self) -> None:
        """A fresh run must not leave an older run's checkpoint to be resumed by mistake."""
        if self.enabled and self.is_main and self.path is not None:
            self.path.unlink(missing_ok=True)

    def write(self, state: Any, meta: dict[str, Any]) -> None:
        """Copy `state` to the host now and write it in the background (rank 0; `state` may be None
        elsewhere). Waits for the previous write first."""
        self.wait()
        self.last_s = float(meta["train_seconds"])
        if not (self.is_main and self.path is not None):
            self.last_step = int(meta["step"])
            return
        tensors, skeleton = flatten_state(state)
        self._outcome = {"step": int(meta["step"])}
        self._thread = threading.Thread(target=self._write, args=(tensors, skeleton, meta), daemon=True,
                                        name="pgolf-checkpoint")
        self._thread.start()

    def _write(self, tensors: dict[str, torch.Tensor], skeleton: Any, meta: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            self._outcome["bytes"] = write_flat_checkpoint(self.path, tensors, skeleton, meta)
        except BaseException as exc:  # reported by wait() on the training thread
            self._outcome["error"] = exc
        self._outcome["write_seconds"] = time.perf_counter() - t0

    def wait(self) -> dict[str, Any] | None:
        """Finish the write in flight; returns what it wrote ({step, bytes, write_seconds}) or None."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        outcome, self._outcome = self._outcome, {}
        if "error" in outcome:
            raise UserError(f"writing checkpoint {self.path} failed ({outcome['error']}); "
                            f"{self.describe_last()}")
        self.last_step = outcome["step"]
        return outcome

    def resumed(self, step: int, train_s: float) -> None:
        self.last_s, self.last_step = train_s, step

    def describe_last(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        if self.last_step is None or self.path is None:
            return "no checkpoint was written (see --train.checkpoint_every_seconds)"
        return f"the last good checkpoint (step {self.last_step}) is {self.path}"
