"""How far below their order-0 entropy an artifact's quantised codes could be coded, printed as one JSON object.

`pgolf quantize` compares the compressed codes with their order-0 (memoryless, per tensor) entropy. A
coder can only go below that bound by using context. This measures, per 2-D code tensor and in total,
the empirical entropy of the codes given two contexts a coder could use:

- `prev`: the magnitude of the previous code in the same row (capped at 15), i.e. an order-1 model;
- `row_bucket`: which eighth of the tensor's rows by code spread the row falls in (a per-row scale model);
- `col_bucket`: the same for columns (input features of different scale: a per-column scale model).

Both are plug-in estimates over the tensor itself (a real adaptive coder also pays to learn its model),
so they are lower bounds on what such a context coder would reach, not sizes it would produce. Two
sizes such a coder would produce (adaptive counts, Krichevsky-Trofimov, over the alphabet -m..m of the
tensor's largest magnitude m) are given beside them:

- `adaptive_order0`: no context;
- `adaptive_neighbours`: given a scale predicted from codes before each one (the previous four magnitudes
  in the row, the mean magnitude of the column over the rows above and of the row so far), in log
  buckets 0.3 wide.

    python benchmarks/code_entropy.py ARTIFACT [--out F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.artifact import (DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_RAW_BYTES, parse_payload, read_blob, read_payload,
                            read_plans, split_streams, unpack_header)
from jsonout import emit
from pgolf.eval.ngram import _groups
from pgolf.quant.layout import decode_parts
from pgolf.quant.pack import order0_entropy_bits


def entropy_bits(values: np.ndarray) -> float:
    """Total order-0 entropy in bits, by the same count `pgolf quantize` compares the codecs against."""
    return order0_entropy_bits(torch.from_numpy(np.ascontiguousarray(values)))


def conditional_bits(values: np.ndarray, context: np.ndarray) -> float:
    """Total empirical entropy in bits of `values` given the context label of each (same shape)."""
    return sum(entropy_bits(values[context == c]) for c in np.unique(context))


def code_tensor_entropies(codes: np.ndarray) -> dict[str, float]:
    """Order-0, given the previous code's magnitude, and given the row's spread bucket; bits, for (rows, cols)."""
    codes = codes.astype(np.int64)
    prev = np.abs(codes[:, :-1]).clip(0, 15)
    order1 = entropy_bits(codes[:, 0]) + conditional_bits(codes[:, 1:], prev)
    return {"order0_bits": entropy_bits(codes), "given_prev_bits": order1,
            "given_row_bucket_bits": conditional_bits(codes, spread_buckets(codes, 1)),
            "given_col_bucket_bits": conditional_bits(codes, spread_buckets(codes, 0)),
            "adaptive_order0_bits": adaptive_bits(codes, np.zeros_like(codes)),
            "adaptive_neighbours_bits": adaptive_bits(codes, neighbour_buckets(codes))}


def _earlier(keys: np.ndarray) -> np.ndarray:
    """For each key, how many earlier keys are equal to it (`pgolf.eval.ngram._groups`)."""
    return _groups(torch.from_numpy(keys))[0].numpy()


def adaptive_bits(codes: np.ndarray, context: np.ndarray, alpha: float = 0.5) -> float:
    """Bits an adaptive coder spends on `codes` in row-major order, each coded by the counts of the earlier codes
    of its context (same shape, non-negative ints): -log2 (n(ctx, c) + alpha) / (n(ctx) + alpha K)."""
    m = int(np.abs(codes).max())
    sym, ctx = codes.ravel().astype(np.int64) + m, context.ravel().astype(np.int64)
    p = (_earlier(ctx * (2 * m + 1) + sym) + alpha) / (_earlier(ctx) + alpha * (2 * m + 1))
    return float(-np.log2(p).sum())


def neighbour_buckets(codes: np.ndarray) -> np.ndarray:
    """Each code's log bucket (0.3 wide) of a scale predicted from the codes before it in row-major order."""
    a = np.abs(codes).astype(np.float64)
    rows, cols = a.shape
    pad = np.concatenate([np.zeros((rows, 4)), a], axis=1)
    prev4 = sum(pad[:, i: i + cols] for i in range(4))
    above = np.arange(rows, dtype=np.float64)[:, None]
    col_mean = np.where(above > 0, (np.cumsum(a, axis=0) - a) / np.maximum(above, 1), a.mean())
    left = np.arange(cols, dtype=np.float64)[None, :]
    row_mean = np.where(left > 0, (np.cumsum(a, axis=1) - a) / np.maximum(left, 1), a.mean())
    log_scale = 0.5 * np.log(prev4 / 4 + 0.5) + 0.5 * np.log(col_mean + 0.5) + 0.3 * np.log(row_mean + 0.5)
    return np.floor((log_scale - log_scale.min()) / 0.3).astype(np.int64)


def spread_buckets(codes: np.ndarray, axis: int) -> np.ndarray:
    """Each code's eighth of the rows (axis 1) or columns (axis 0) by the spread of their codes; codes' shape."""
    spread = codes.std(axis=axis)
    edges = np.quantile(spread, np.linspace(0, 1, 9)[1:-1])
    b = np.digitize(spread, edges)
    return np.broadcast_to(b[:, None] if axis == 1 else b[None, :], codes.shape)


def artifact_codes(path: Path) -> dict[str, np.ndarray]:
    """Name -> integer codes (rows, cols) of every 2-D quantised tensor of an artifact (read, not executed)."""
    blob = read_blob(path, DEFAULT_MAX_FILE_BYTES)
    header = unpack_header(path, blob, DEFAULT_MAX_RAW_BYTES)
    payload, data = parse_payload(path, read_payload(path, header))
    plans = read_plans(path, payload["tensors"])
    streams = split_streams(path, plans, payload["layout"], data)
    out = {}
    for name, plan in plans.items():
        parts = decode_parts(plan, streams[name])
        q = parts.get("q")
        if q is not None and q.dim() == 2 and not q.is_floating_point():
            out[name] = q.numpy()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for name, codes in artifact_codes(Path(a.artifact)).items():
        rows.append({"tensor": name, "shape": list(codes.shape), **code_tensor_entropies(codes)})
    total = {k: sum(r[k] for r in rows)
             for k in ("order0_bits", "given_prev_bits", "given_row_bucket_bits", "given_col_bucket_bits",
                       "adaptive_order0_bits", "adaptive_neighbours_bits")}
    result = {
        "benchmark": "code_entropy",
        "artifact": a.artifact,
        "tensors": len(rows),
        "codes": int(sum(np.prod(r["shape"]) for r in rows)),
        "order0_bytes": total["order0_bits"] / 8,
        "given_prev_ratio": total["given_prev_bits"] / total["order0_bits"],
        "given_row_bucket_ratio": total["given_row_bucket_bits"] / total["order0_bits"],
        "given_col_bucket_ratio": total["given_col_bucket_bits"] / total["order0_bits"],
        "adaptive_order0_ratio": total["adaptive_order0_bits"] / total["order0_bits"],
        "adaptive_neighbours_ratio": total["adaptive_neighbours_bits"] / total["order0_bits"],
        "rows": rows,
    }
    emit(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
