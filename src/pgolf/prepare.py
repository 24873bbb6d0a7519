"""`pgolf prepare`: embedded corpus -> deterministic train/validation split -> tokenizer -> shards.

The tokenizer is trained on training documents only, so no validation text shapes any part of the
model. Outputs use the challenge's layout and shard format, so everything downstream reads the
embedded corpus and FineWeb the same way. A `prepare.json` beside the shards records what was built
and from what; a rerun with the same inputs reuses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.config import PrepareConfig, RunConfig, config_hash
from pgolf.data.corpus import SOURCES, corpus_fingerprint, load_documents, shuffle_documents, split_documents
from pgolf.data.shards import write_documents_as_shards
from pgolf.data.spm_train import train_tokenizer
from pgolf.runlog import write_json_atomic
from pgolf.tokenizer import BOS_ID, encode_documents, file_sha256, load_tokenizer

MANIFEST_NAME = "prepare.json"
PREPARE_VERSION = 2
"""Bumped whenever the output of a preparation changes for the same inputs (invalidates old builds)."""


@dataclass
class PrepareResult:
    """Where the prepared data is and what it holds."""

    dataset_dir: Path
    tokenizer_path: Path
    manifest: dict[str, Any]
    reused: bool


def prepare_key(cfg: PrepareConfig, vocab_size: int, sources: tuple[str, ...]) -> str:
    """Identity of a preparation: the corpus bytes and every setting that changes the output."""
    settings = {k: v for k, v in vars(cfg).items() if k != "force"}
    settings["vocab_size"] = vocab_size
    settings["prepare_version"] = PREPARE_VERSION
    return f"{corpus_fingerprint(sources)[:16]}-{config_hash(settings)}"


def _existing(dataset_dir: Path, tokenizer_path: Path, key: str) -> dict[str, Any] | None:
    """The manifest of an earlier identical preparation whose files are all still there."""
    import json

    path = dataset_dir / MANIFEST_NAME
    if not path.exists() or not tokenizer_path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or manifest.get("tokenizer_sha256") != file_sha256(tokenizer_path):
        return None
    if not all((dataset_dir / name).exists() for name in manifest.get("shards", [])):
        return None
    return manifest


def _clear_old_shards(dataset_dir: Path) -> None:
    """Remove shards of an earlier preparation so no stale file is read as part of the new one."""
    for old in list(dataset_dir.glob("fineweb_train_*.bin")) + list(dataset_dir.glob("fineweb_val_*.bin")):
        old.unlink()


def prepare(run: RunConfig, *, sources: tuple[str, ...] = SOURCES, log: Any = print) -> PrepareResult:
    """Build the run's tokenizer (at model.vocab_size) and shards from the embedded corpus, or reuse an
    identical earlier build."""
    cfg, vocab_size = run.prepare, run.model.vocab_size
    run.validate()
    dataset_dir, tok_path = Path(run.dataset_dir), Path(run.tokenizer_path)
    key = prepare_key(cfg, vocab_size, sources)
    if not cfg.force and (manifest := _existing(dataset_dir, tok_path, key)) is not None:
        log(f"prepare: reusing {dataset_dir} (key {key})")
        return PrepareResult(dataset_dir, tok_path, manifest, reused=True)

    t0 = time.perf_counter()
    docs = load_documents(sources)
    if cfg.max_docs_per_source:
        docs = _first_per_source(docs, cfg.max_docs_per_source)
    train_docs, val_docs = split_documents(docs, cfg.val_target_bytes, cfg.split_seed)
    train_docs = shuffle_documents(train_docs, cfg.split_seed)  # every stretch of the stream mixes sources
    log(f"prepare: {len(docs):,} documents -> {len(train_docs):,} train / {len(val_docs):,} val")

    train_tokenizer((d.text for d in train_docs), vocab_size, tok_path, max_text_bytes=cfg.tokenizer_train_bytes)
    sp = load_tokenizer(tok_path, vocab_size)
    log(f"prepare: tokenizer {tok_path} (vocab {vocab_size}) in {time.perf_counter() - t0:.1f} s")

    dataset_dir.mkdir(parents=True, exist_ok=True)
    _clear_old_shards(dataset_dir)
    shard_paths: list[Path] = []
    counts: dict[str, dict[str, int]] = {}
    for split, split_docs in (("val", val_docs), ("train", train_docs)):
        tokens = encode_documents(sp, [d.text for d in split_docs])
        shard_paths += write_documents_as_shards(dataset_dir, split, tokens, bos_id=BOS_ID,
                                                 shard_tokens=cfg.shard_tokens)
        counts[split] = {
            "documents": len(split_docs),
            "tokens": int(sum(len(t) for t in tokens)) + len(tokens),
            "text_bytes": int(sum(len(d.text.encode("utf-8")) for d in split_docs)),
        }
    manifest = {
        "key": key,
        "sources": list(sources),
        "corpus_sha256": corpus_fingerprint(sources),
        "tokenizer_sha256": file_sha256(tok_path),
        "vocab_size": vocab_size,
        "shards": sorted(p.name for p in shard_paths),
        "counts": counts,
        "val_doc_ids": [d.doc_id for d in val_docs],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(dataset_dir / MANIFEST_NAME, manifest)
    log(f"prepare: wrote {len(shard_paths)} shards to {dataset_dir}: train {counts['train']['tokens']:,} tokens, "
        f"val {counts['val']['tokens']:,} tokens ({manifest['seconds']:.1f} s)")
    return PrepareResult(dataset_dir, tok_path, manifest, reused=False)


def _first_per_source(docs: list[Any], limit: int) -> list[Any]:
    """Keep the first `limit` documents of each source (small, fast preparations for tests)."""
    seen: dict[str, int] = {}
    kept = []
    for d in docs:
        seen[d.source] = seen.get(d.source, 0) + 1
        if seen[d.source] <= limit:
            kept.append(d)
    return kept
