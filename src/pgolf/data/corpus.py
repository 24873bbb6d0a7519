"""The embedded English corpus shipped with pgolf, and its deterministic train/validation split.

Three sources live in `corpus_data/` as xz-compressed JSON lines (`{"id": ..., "text": ...}`):
State of the Union addresses 1790-2021, the 18 NLTK Project Gutenberg books cut into chapters, and
the lead sections of about 10k Wikipedia vital articles (CC BY-SA 4.0; see `SOURCES.md`). The
files are built by `tools/build_corpus.py`. The validation split takes whole documents, an equal
byte share from every source, chosen by a seeded shuffle that does not depend on Python's hashing.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgolf.errors import UserError

SOURCES: tuple[str, ...] = ("sotu", "gutenberg", "wiki")
_REBUILD = "reinstall pgolf or rebuild it with `python3 tools/build_corpus.py`"


@dataclass(frozen=True)
class Document:
    """One whole document of the corpus; `doc_id` is unique across sources (`sotu/1790-george-washington`)."""

    source: str
    doc_id: str
    text: str


def corpus_dir() -> Path:
    """The folder holding the shipped `<source>.jsonl.xz` files."""
    return Path(__file__).resolve().parent / "corpus_data"


def _source_path(source: str, root: Path | None) -> Path:
    """Path of one source's file; a UserError for a name that is not a corpus source."""
    if source not in SOURCES:
        raise UserError(f"unknown corpus source {source!r}; choose from: {', '.join(SOURCES)}")
    return (corpus_dir() if root is None else Path(root)) / f"{source}.jsonl.xz"


def _read_source(source: str, root: Path | None) -> list[Document]:
    """Decompress and parse one source file, turning every failure into a one-line UserError."""
    path = _source_path(source, root)
    try:
        raw = lzma.decompress(path.read_bytes())
        records = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]
        docs = [Document(source, r["id"], r["text"]) for r in records]
    except FileNotFoundError:
        raise UserError(f"corpus file {path} is missing; {_REBUILD}") from None
    except (OSError, lzma.LZMAError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"corpus file {path} is unreadable ({type(e).__name__}); {_REBUILD}") from None
    bad = next((d for d in docs if not (isinstance(d.doc_id, str) and isinstance(d.text, str)
                                        and d.doc_id.startswith(f"{source}/"))), None)
    if bad is not None or not docs:
        raise UserError(f"corpus file {path} has {'a malformed record' if docs else 'no documents'}; {_REBUILD}")
    return docs


def load_documents(sources: Sequence[str] = SOURCES, root: Path | None = None) -> list[Document]:
    """All documents of `sources`, in source order then file order (`root` defaults to `corpus_dir()`)."""
    docs: list[Document] = []
    for source in sources:
        docs += _read_source(source, root)
    return docs


def corpus_fingerprint(sources: Sequence[str] = SOURCES, root: Path | None = None) -> str:
    """sha256 hex over each source's file name and compressed bytes (no decompression)."""
    digest = hashlib.sha256()
    for source in sources:
        path = _source_path(source, root)
        try:
            data = path.read_bytes()
        except OSError:
            raise UserError(f"corpus file {path} is missing or unreadable; {_REBUILD}") from None
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _pick_validation(sizes: Sequence[int], share: float, rng: np.random.Generator) -> list[int]:
    """Positions (into `sizes`) taken in shuffled order until `share` bytes; documents larger than
    twice the share are passed over unless no other document exists."""
    order = rng.permutation(len(sizes))
    picked: list[int] = []
    taken = 0
    for j in order:
        if taken >= share:
            break
        if sizes[j] <= 2 * share:
            picked.append(int(j))
            taken += sizes[j]
    if not picked:
        picked = [int(order[0])]
    return picked


def split_documents(docs: Sequence[Document], val_target_bytes: int,
                    seed: int) -> tuple[list[Document], list[Document]]:
    """(train, val) of whole documents; val holds about `val_target_bytes` UTF-8 bytes in equal shares
    from every source present, both lists in the input's order. Deterministic in (docs, seed)."""
    if val_target_bytes <= 0:
        raise UserError(f"validation size {val_target_bytes} bytes must be > 0")
    if seed < 0:
        raise UserError(f"split seed {seed} must be >= 0")
    positions: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        positions.setdefault(doc.source, []).append(i)
    share = val_target_bytes / max(1, len(positions))
    val_positions: set[int] = set()
    for source, idx in positions.items():
        # crc32, not hash(): the per-source stream must not change with PYTHONHASHSEED
        rng = np.random.default_rng(seed + zlib.crc32(source.encode("utf-8")))
        sizes = [len(docs[i].text.encode("utf-8")) for i in idx]
        picked = _pick_validation(sizes, share, rng)
        if len(picked) == len(idx):
            raise UserError(f"the validation split would take all {len(idx)} documents of source {source!r}; "
                            f"lower the validation size ({val_target_bytes} bytes) or use more documents")
        val_positions.update(idx[j] for j in picked)
    train = [d for i, d in enumerate(docs) if i not in val_positions]
    val = [d for i, d in enumerate(docs) if i in val_positions]
    return train, val


def shuffle_documents(docs: Sequence[Document], seed: int) -> list[Document]:
    """The documents in one fixed pseudo-random order (numpy's generator, so the same on every machine).

    The corpus is stored source by source; training reads its shard front to back, so without this
    the first 4M tokens would be nothing but speeches. Like the challenge's frozen shuffle of
    `docs_selected.jsonl`, the order is fixed once, at preparation time."""
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]

