"""The embedded corpus: shipped files match SOURCES.md, each source loads with plausible size, ids are
unique, and the validation split is deterministic, disjoint from training, drawn from every source
and close to its byte target. Broken files give a one-line UserError naming the file."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pgolf.data.corpus import (SOURCES, Document, corpus_dir, corpus_fingerprint, load_documents, shuffle_documents,
                               split_documents)
from pgolf.errors import UserError

VAL_BYTES = 800_000
# (min docs, max docs, min text MB, max text MB) per source
EXPECTED = {
    "sotu": (220, 250, 9.0, 13.0),
    "gutenberg": (300, 1_500, 10.0, 14.0),
    "wiki": (9_000, 11_000, 4.0, 6.0),
}


def nbytes(docs: list[Document]) -> int:
    return sum(len(d.text.encode("utf-8")) for d in docs)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return load_documents()


@pytest.fixture(scope="module")
def split0(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    return split_documents(docs, VAL_BYTES, seed=0)


def test_shipped_files_match_sources_md() -> None:
    listed = dict(re.findall(r"\|\s*`(\w+\.jsonl\.xz)`.*`([0-9a-f]{64})`\s*\|",
                             (corpus_dir() / "SOURCES.md").read_text(encoding="utf-8")))
    assert sorted(listed) == sorted(f"{s}.jsonl.xz" for s in SOURCES)
    for name, expected in listed.items():
        path = corpus_dir() / name
        assert path.is_file(), path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, name
    total = sum((corpus_dir() / name).stat().st_size for name in listed)
    assert 6_000_000 <= total <= 9_000_000


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_has_plausible_size(docs: list[Document], source: str) -> None:
    mine = [d for d in docs if d.source == source]
    lo, hi, lo_mb, hi_mb = EXPECTED[source]
    assert lo <= len(mine) <= hi
    assert lo_mb * 1e6 <= nbytes(mine) <= hi_mb * 1e6
    assert all(d.doc_id.startswith(f"{source}/") and d.text.strip() for d in mine)


def test_known_documents_are_present(docs: list[Document]) -> None:
    by_id = {d.doc_id: d for d in docs}
    assert "Fellow-Citizens" in by_id["sotu/1790-george-washington"].text
    assert by_id["gutenberg/carroll-alice/ch001"].text.startswith("CHAPTER I. Down the Rabbit-Hole")
    assert len({d.doc_id.split("/")[1] for d in docs if d.source == "gutenberg"}) == 18
    assert "relativity" in by_id["wiki/Albert_Einstein"].text


def test_ids_and_texts_are_unique_and_text_is_normalised(docs: list[Document]) -> None:
    assert len({d.doc_id for d in docs}) == len(docs)
    assert len({d.text for d in docs}) == len(docs)
    for d in docs:
        assert "\r" not in d.text and "\x00" not in d.text, d.doc_id
        assert re.search(r"[ \t]$", d.text, re.M) is None, d.doc_id


def test_load_follows_source_order_and_rejects_unknown(docs: list[Document]) -> None:
    assert [d.source for d in docs] == sorted((d.source for d in docs), key=SOURCES.index)
    picked = load_documents(("wiki", "sotu"))
    assert picked[0].source == "wiki" and picked[-1].source == "sotu"
    with pytest.raises(UserError, match="nosuch"):
        load_documents(("nosuch",))


def test_fingerprint_depends_on_selected_files(tmp_path: Path) -> None:
    full = corpus_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", full) and full == corpus_fingerprint(SOURCES)
    assert corpus_fingerprint(("sotu",)) != full
    for name in ("sotu", "gutenberg", "wiki"):
        shutil.copy(corpus_dir() / f"{name}.jsonl.xz", tmp_path)
    assert corpus_fingerprint(root=tmp_path) == full
    with open(tmp_path / "wiki.jsonl.xz", "ab") as f:
        f.write(b"\0")
    assert corpus_fingerprint(root=tmp_path) != full


def test_split_is_deterministic_and_seeded(docs: list[Document],
                                           split0: tuple[list[Document], list[Document]]) -> None:
    train, val = split_documents(docs, VAL_BYTES, seed=0)
    assert [d.doc_id for d in val] == [d.doc_id for d in split0[1]]
    assert [d.doc_id for d in train] == [d.doc_id for d in split0[0]]
    other = split_documents(docs, VAL_BYTES, seed=1)[1]
    assert {d.doc_id for d in other} != {d.doc_id for d in val}


def test_split_is_disjoint_complete_and_ordered(docs: list[Document],
                                                split0: tuple[list[Document], list[Document]]) -> None:
    train, val = split0
    assert not {d.doc_id for d in train} & {d.doc_id for d in val}
    assert not {d.text for d in train} & {d.text for d in val}
    assert len(train) + len(val) == len(docs)
    position = {d.doc_id: i for i, d in enumerate(docs)}
    for part in (train, val):
        assert [position[d.doc_id] for d in part] == sorted(position[d.doc_id] for d in part)


def test_val_draws_equal_shares_from_every_source(split0: tuple[list[Document], list[Document]]) -> None:
    _, val = split0
    # at vocab 1024 (~2.5-3 bytes/token) this is roughly 250k-400k validation tokens
    assert 0.75 * VAL_BYTES <= nbytes(val) <= 1.25 * VAL_BYTES
    share = VAL_BYTES / len(SOURCES)
    per_source = Counter()
    for d in val:
        per_source[d.source] += len(d.text.encode("utf-8"))
    assert set(per_source) == set(SOURCES)
    for source, got in per_source.items():
        assert 0.75 * share <= got <= 1.5 * share, (source, got)


def _synthetic(sizes: dict[str, list[int]]) -> list[Document]:
    return [Document(s, f"{s}/{i}", f"{s} {i} " + "x" * n) for s, ns in sizes.items() for i, n in enumerate(ns)]


def test_split_skips_oversized_documents_and_keeps_one_per_source() -> None:
    docs = _synthetic({"a": [10_000] + [100] * 50, "b": [5_000, 6_000, 7_000]})
    for seed in range(20):
        train, val = split_documents(docs, val_target_bytes=2_000, seed=seed)
        assert "a/0" not in {d.doc_id for d in val}  # 10 kB > 2 x the 1 kB share
        assert Counter(d.source for d in val)["b"] == 1  # every b document is oversized; one is still taken
        assert {d.source for d in train} == {"a", "b"}


def test_split_refuses_to_take_a_whole_source() -> None:
    docs = _synthetic({"a": [100] * 100, "b": [100, 100]})
    with pytest.raises(UserError, match="'b'"):
        split_documents(docs, val_target_bytes=10_000, seed=0)


def test_split_does_not_depend_on_python_hash_seed() -> None:
    code = ("from pgolf.data.corpus import Document, split_documents\n"
            "docs = [Document(s, f'{s}/{i}', 'w' * (50 + 7 * i)) for s in ('p', 'q', 'r') for i in range(40)]\n"
            "print(','.join(d.doc_id for d in split_documents(docs, 3_000, seed=5)[1]))\n")
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.add(proc.stdout)
    assert len(outputs) == 1 and outputs.pop().strip()


def _copy_corpus(dest: Path) -> None:
    for name in SOURCES:
        shutil.copy(corpus_dir() / f"{name}.jsonl.xz", dest)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "bad_json", "bad_id"])
def test_broken_file_is_a_one_line_user_error(tmp_path: Path, damage: str) -> None:
    _copy_corpus(tmp_path)
    path = tmp_path / "sotu.jsonl.xz"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100_000])
    elif damage == "garbage":
        path.write_bytes(b"not an xz file at all")
    elif damage == "bad_json":
        path.write_bytes(lzma.compress(b'{"id": "sotu/x", "text": \n'))
    else:
        path.write_bytes(lzma.compress((json.dumps({"id": "wiki/x", "text": "t"}) + "\n").encode()))
    with pytest.raises(UserError) as err:
        load_documents(("sotu",), root=tmp_path)
    message = str(err.value)
    assert str(path) in message and "build_corpus.py" in message and "\n" not in message
    assert load_documents(("wiki",), root=tmp_path)  # the other files still load
    if damage == "missing":
        with pytest.raises(UserError, match=re.escape(str(path))):
            corpus_fingerprint(root=tmp_path)


def test_training_order_mixes_sources_early_and_is_fixed(split0: tuple[list[Document], list[Document]]) -> None:
    train, _ = split0
    shuffled = shuffle_documents(train, seed=0)
    assert shuffled == shuffle_documents(train, seed=0) and shuffled != shuffle_documents(train, seed=1)
    assert sorted(d.doc_id for d in shuffled) == sorted(d.doc_id for d in train)
    # Stored order puts every speech first; the first 2% of the shuffled stream holds all sources.
    assert {d.source for d in train[: len(train) // 50]} == {"sotu"}
    assert {d.source for d in shuffled[: len(shuffled) // 50]} == set(SOURCES)
