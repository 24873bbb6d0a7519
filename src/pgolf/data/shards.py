"""The challenge's token shard format, read and written byte for byte like the original.

A shard `fineweb_{train,val}_%06d.bin` is a 1024-byte header of 256 little-endian int32
(`[MAGIC, VERSION, num_tokens, 0, ...]`) followed by `num_tokens` little-endian uint16 tokens
(writer `data/download_hf_docs_and_tokenize.py::write_datafile`, reader `train_gpt.py::load_data_shard`
in openai/parameter-golf). Documents are stored as `[BOS] + tokens` with no EOS and may straddle
shards. Every reader here validates the header and the file size, so a truncated download or an
interrupted write is reported with the file name instead of surfacing as garbage tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
SPLITS = ("train", "val")

_FIX = "re-run `pgolf prepare --prepare.force true` or re-download with `pgolf data fineweb`"
_MISSING_HINT = ("run `pgolf prepare` (embedded corpus) or "
                 "`pgolf data fineweb --variant sp1024 --train-shards N` (challenge data)")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`, e.g. `fineweb_train_000003.bin`."""
    _check_split(split)
    if index < 0:
        raise ValueError(f"shard index {index} must be >= 0")
    return f"fineweb_{split}_{index:06d}.bin"


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray) -> Path:
    """Write `tokens` as one shard; a temporary name is renamed into place so readers never see half a file."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"shard tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"shard tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= 2**16):
        raise ValueError(f"shard tokens must lie in [0, 65536) to fit uint16, got "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    return write_bytes_atomic(path, header.tobytes(), tokens.astype(TOKEN_DTYPE, copy=False).tobytes())


def read_shard_header(path: str | os.PathLike[str]) -> int:
    """Number of tokens in a shard, after checking magic, version and that the size matches the header."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"shard {path} not found; {_MISSING_HINT}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"shard {path} is {size} bytes, shorter than the {HEADER_BYTES}-byte header; {_FIX}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise UserError(f"shard {path} has magic {int(header[0])}, expected {MAGIC} "
                        f"(not a challenge shard); {_FIX}")
    if int(header[1]) != VERSION:
        raise UserError(f"shard {path} has version {int(header[1])}, expected {VERSION}; {_FIX}")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + TOKEN_DTYPE.itemsize * num_tokens
    if num_tokens < 0 or size != expected:
        kind = "truncated" if size < expected else "over-long"
        raise UserError(f"shard {path} is {kind}: {size} bytes but its header says {num_tokens} tokens "
                        f"({expected} bytes); {_FIX}")
    return num_tokens


def load_shard(path: str | os.PathLike[str], vocab_size: int | None = None) -> np.ndarray:
    """All tokens of a validated shard, uint16, in memory (ids checked against `vocab_size` if given)."""
    num_tokens = read_shard_header(path)
    tokens = np.fromfile(path, dtype=TOKEN_DTYPE, count=num_tokens, offset=HEADER_BYTES).astype(np.uint16, copy=False)
    if vocab_size is not None:
        check_token_ids(path, tokens, vocab_size)
    return tokens


def open_shard_memmap(path: str | os.PathLike[str], vocab_size: int | None = None) -> np.memmap:
    """A read-only memory-mapped uint16 view of a validated shard's tokens; with `vocab_size`, its ids
    are checked once here (one pass over the file) so a bad id never surfaces mid-run."""
    num_tokens = read_shard_header(path)
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
    if vocab_size is not None:
        check_token_ids(path, tokens, vocab_size)
    return tokens


class MissingShardsError(UserError):
    """No shards of a split where they were looked for (the folder is missing or holds none)."""


def list_shards(dataset_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """The shards of `split` in `dataset_dir`, in index order; a clear error when there are none, when
    a name is not the canonical `fineweb_<split>_%06d.bin`, or when the numbering has a gap."""
    _check_split(split)
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise MissingShardsError(f"dataset folder {dataset_dir} not found; {_MISSING_HINT}")
    # An exact pattern, not the glob `fineweb_val_*.bin`, which would also take sidecars
    # such as `fineweb_val_bytes_000000.bin`.
    pattern = re.compile(rf"fineweb_{split}_(\d+)\.bin")
    found = sorted((int(m.group(1)), p) for p in dataset_dir.iterdir() if (m := pattern.fullmatch(p.name)))
    if not found:
        raise MissingShardsError(f"no fineweb_{split}_*.bin shards in {dataset_dir}; {_MISSING_HINT}")
    for index, path in found:
        if path.name != shard_name(split, index):
            raise UserError(f"shard {path} is not named {shard_name(split, index)} (it would be read as shard {index}, "
                            f"ambiguously); rename or remove it")
    for expected, (index, path) in enumerate(found):
        if index != expected:
            raise UserError(f"shard numbering in {dataset_dir} has a gap: {shard_name(split, expected)} is missing "
                            f"before {path.name}; {_FIX}")
    return [p for _, p in found]


def check_token_ids(path: str | os.PathLike[str], tokens: np.ndarray, vocab_size: int) -> None:
    """A UserError naming the shard when any token id is outside the model's vocabulary."""
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise UserError(f"shard {path} holds token id {int(tokens.max())}, outside the vocabulary of "
                        f"{vocab_size}; the shards were made with another tokenizer: point --data.dataset_dir at "
                        f"shards of vocab {vocab_size} or set --model.vocab_size to match")


def write_documents_as_shards(out_dir: str | os.PathLike[str], split: str, docs: Sequence[np.ndarray], *,
                              bos_id: int, shard_tokens: int) -> list[Path]:
    """Write `[bos_id] + doc` for each document as one stream cut into shards of at most `shard_tokens`.

    Like the challenge's writer, a document that does not fit in the current shard continues in the
    next one, and shards are numbered from 0 for each split. Returns the paths written, in order.
    """
    _check_split(split)
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens={shard_tokens} must be >= 1")
    if not 0 <= bos_id < 2**16:
        raise ValueError(f"bos_id={bos_id} must lie in [0, 65536)")
    out_dir = Path(out_dir)
    buffer = np.empty(shard_tokens, dtype=np.uint16)
    fill = 0
    paths: list[Path] = []
    for doc_index, doc in enumerate(docs):
        tokens = _checked_doc(doc, doc_index)
        for piece in (np.array([bos_id], dtype=np.uint16), tokens):
            start = 0
            while start < piece.size:
                take = min(shard_tokens - fill, piece.size - start)
                buffer[fill:fill + take] = piece[start:start + take]
                fill += take
                start += take
                if fill == shard_tokens:
                    paths.append(write_shard(out_dir / shard_name(split, len(paths)), buffer))
                    fill = 0
    if fill:
        paths.append(write_shard(out_dir / shard_name(split, len(paths)), buffer[:fill]))
    return paths


def _checked_doc(doc: np.ndarray, doc_index: int) -> np.ndarray:
    """A document's tokens as uint16, refusing values that would wrap silently."""
    arr = np.asarray(doc)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint16)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"document {doc_index} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if int(arr.min()) < 0 or int(arr.max()) >= 2**16:
        raise ValueError(f"document {doc_index} has tokens outside [0, 65536)")
    return arr.astype(np.uint16, copy=False)


def count_tokens(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Total tokens of the shards, read from their headers only."""
    return sum(read_shard_header(p) for p in paths)


def load_tokens(paths: Iterable[str | os.PathLike[str]], vocab_size: int | None = None) -> np.ndarray:
    """The shards' tokens concatenated in the given order, uint16 (ids checked if `vocab_size` is given)."""
    parts = [load_shard(p, vocab_size) for p in paths]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
