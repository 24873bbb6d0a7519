"""The challenge shard format: exact bytes, validation with file-naming errors, document layout."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from pgolf.data.shards import (
    MAGIC,
    VERSION,
    count_tokens,
    list_shards,
    load_shard,
    load_tokens,
    open_shard_memmap,
    read_shard_header,
    shard_name,
    write_documents_as_shards,
    write_shard,
)
from pgolf.errors import UserError


def test_shard_name() -> None:
    assert shard_name("train", 3) == "fineweb_train_000003.bin"
    assert shard_name("val", 0) == "fineweb_val_000000.bin"
    with pytest.raises(ValueError):
        shard_name("test", 0)
    with pytest.raises(ValueError):
        shard_name("train", -1)


def test_roundtrip_and_exact_bytes(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 2, 1023, 65535, 300], dtype=np.int64)
    path = write_shard(tmp_path / "sub" / shard_name("train", 0), tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(tokens)
    header = struct.unpack("<256i", raw[:1024])
    assert header[:3] == (20240520, 1, len(tokens)) and not any(header[3:])
    assert struct.unpack(f"<{len(tokens)}H", raw[1024:]) == tuple(tokens.tolist())
    assert read_shard_header(path) == len(tokens)
    loaded = load_shard(path)
    assert loaded.dtype == np.uint16 and loaded.tolist() == tokens.tolist()
    mm = open_shard_memmap(path)
    assert isinstance(mm, np.memmap) and mm.tolist() == tokens.tolist()
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == [path.name]  # no temporary left behind


def test_empty_shard(tmp_path: Path) -> None:
    path = write_shard(tmp_path / shard_name("val", 0), np.zeros(0, dtype=np.uint16))
    assert read_shard_header(path) == 0
    assert load_shard(path).size == 0 and open_shard_memmap(path).size == 0


@pytest.mark.parametrize("bad", [[-1], [65536], [0.5]])
def test_write_rejects_out_of_range(tmp_path: Path, bad: list) -> None:
    with pytest.raises(ValueError):
        write_shard(tmp_path / "x.bin", np.array(bad))
    assert not list(tmp_path.iterdir())


def _corrupt(path: Path, *, magic: int = MAGIC, version: int = VERSION, num_tokens: int = 4,
             body_tokens: int = 4) -> Path:
    header = struct.pack("<256i", magic, version, num_tokens, *([0] * 253))
    path.write_bytes(header + b"\x01\x00" * body_tokens)
    return path


@pytest.mark.parametrize("kind, kwargs, words", [
    ("magic", {"magic": 1234}, ["magic 1234", "expected 20240520"]),
    ("version", {"version": 7}, ["version 7"]),
    ("truncated", {"body_tokens": 3}, ["truncated"]),
    ("too long", {"body_tokens": 5}, ["over-long"]),
])
def test_bad_shards_name_the_file(tmp_path: Path, kind: str, kwargs: dict, words: list[str]) -> None:
    path = _corrupt(tmp_path / "fineweb_train_000000.bin", **kwargs)
    for reader in (read_shard_header, load_shard, open_shard_memmap):
        with pytest.raises(UserError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert all(w in message for w in words), message
        assert "pgolf prepare --prepare.force true" in message and "pgolf data fineweb" in message


def test_short_and_missing_files(tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="shorter than"):
        read_shard_header(short)
    missing = tmp_path / "nope.bin"
    with pytest.raises(UserError) as info:
        load_shard(missing)
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_documents_get_bos_and_straddle_shards(tmp_path: Path) -> None:
    docs = [np.array([10, 11, 12]), np.array([], dtype=np.int64), np.array([20, 21, 22, 23, 24])]
    paths = write_documents_as_shards(tmp_path, "train", docs, bos_id=1, shard_tokens=4)
    assert [p.name for p in paths] == [shard_name("train", i) for i in range(3)]
    assert [read_shard_header(p) for p in paths] == [4, 4, 3]
    assert load_tokens(paths).tolist() == [1, 10, 11, 12, 1, 1, 20, 21, 22, 23, 24]
    assert count_tokens(paths) == 11
    assert list_shards(tmp_path, "train") == paths


def test_documents_exact_fill_and_val_numbering(tmp_path: Path) -> None:
    paths = write_documents_as_shards(tmp_path, "val", [np.arange(2, 5)], bos_id=1, shard_tokens=4)
    assert [p.name for p in paths] == ["fineweb_val_000000.bin"]  # no empty trailing shard
    assert load_shard(paths[0]).tolist() == [1, 2, 3, 4]
    assert write_documents_as_shards(tmp_path, "val", [], bos_id=1, shard_tokens=4) == []
    with pytest.raises(ValueError):
        write_documents_as_shards(tmp_path, "train", [np.array([70000])], bos_id=1, shard_tokens=4)


def test_list_shards_order_and_filter(tmp_path: Path) -> None:
    for i in (10, 2, 0, 9, 1, 3, 8, 4, 7, 5, 6):  # numeric order, not name order of the digits
        write_shard(tmp_path / shard_name("train", i), np.array([i]))
    write_shard(tmp_path / shard_name("val", 0), np.array([5]))
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", np.array([5]))  # a sidecar, not a shard
    (tmp_path / ".fineweb_train_000003.bin.tmp-1").write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path, "train")] == [shard_name("train", i) for i in range(11)]
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin"]


def test_list_shards_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        list_shards(missing, "train")
    assert str(missing) in str(info.value) and "pgolf prepare" in str(info.value)
    with pytest.raises(UserError) as info:
        list_shards(tmp_path, "val")
    message = str(info.value)
    assert str(tmp_path) in message and "fineweb_val_" in message
    assert "pgolf data fineweb --variant sp1024 --train-shards N" in message
    assert count_tokens([]) == 0 and load_tokens([]).size == 0


@pytest.mark.parametrize("names,message", [
    (["fineweb_train_000000.bin", "fineweb_train_000002.bin"], "gap"),
    (["fineweb_train_000001.bin"], "gap"),
    (["fineweb_train_000000.bin", "fineweb_train_0000010.bin", "fineweb_train_000010.bin"], "not named"),
    (["fineweb_train_0.bin"], "not named"),
])
def test_shard_numbering_must_be_canonical_and_contiguous(tmp_path: Path, names: list[str], message: str) -> None:
    for name in names:
        write_shard(tmp_path / name, np.arange(4))
    with pytest.raises(UserError, match=message):
        list_shards(tmp_path, "train")


def test_token_ids_outside_the_vocabulary_are_refused_when_opened(tmp_path: Path) -> None:
    path = write_shard(tmp_path / shard_name("train", 0), np.array([1, 5, 700, 3]))
    assert open_shard_memmap(path, vocab_size=1024).size == 4
    for reader in (open_shard_memmap, load_shard):
        with pytest.raises(UserError, match=f"{path.name}.*700.*vocabulary of 512"):
            reader(path, vocab_size=512)
    with pytest.raises(UserError, match="700"):
        load_tokens([path], vocab_size=700)
