"""Every random generator a run may draw from, captured and restored as one state: torch (CPU and the
run's CUDA device), numpy's and Python's global generators. The trainer's state holds it, so the warm-up
undo and a resumed checkpoint (`pgolf.checkpoint`) continue on exactly the same random streams."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator's state: torch CPU, the run's CUDA device, numpy global, Python global."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4]),
                  "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))},
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to("cpu", torch.uint8), device)
