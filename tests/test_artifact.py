"""The artifact container: exact roundtrip, determinism, no pickle, counted bytes, atomic writes, and the
plain corruptions of a file as stored (the checksum catches them). Lies with a recomputed checksum and
decompression bombs are in test_artifact_hostile.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import torch
from helpers_quant import CODE_BYTES, export, small_config, trained_like, with_quant

from pgolf import artifact
from pgolf.artifact import COMPRESSORS, SCORING_MODULES, check_budget, read_artifact
from pgolf.config import config_to_dict
from pgolf.errors import UserError
from pgolf.model.gpt import GPT
from pgolf.quant import pack

RICH = {"scheme": "intx", "keep_float_max_numel": 0, "matrix_bits": 5, "matrix_clip": "gptq_lite", "group_size": 16,
        "packing": "bitpack", "byte_shuffle": True, "transpose_codes": True, "lqer_rank": 2, "lqer_group_size": 16,
        "control_dtype": "float16"}


def assert_user_error(path: Path, match: str, **kwargs: object) -> str:
    with pytest.raises(UserError, match=match) as info:
        read_artifact(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))


# ---------------------------------------------------------------- roundtrip

@pytest.mark.parametrize("compressor", [*COMPRESSORS, "best"])
@pytest.mark.parametrize("quant", [{}, RICH], ids=["baseline", "rich"])
def test_roundtrip_is_bit_exact_with_in_memory_dequantisation(tmp_path: Path, compressor: str, quant: dict) -> None:
    cfg = small_config(compressor=compressor, level=5 if compressor not in ("none", "best") else 9, **quant)
    model = trained_like(cfg)
    res = export(tmp_path / "a.ptz", model, cfg)
    loaded = read_artifact(res.info.path)
    expected = {n: q.restore() for n, q in res.fit.quantized.items()}
    assert loaded.state.keys() == model.state_dict().keys() == expected.keys()
    for name, t in expected.items():
        assert bits_equal(loaded.state[name], t), name
    assert loaded.meta["compressor"] == res.fit.compressor
    assert loaded.plans == res.fit.plans
    if quant:
        assert any(p.lqer_rank for p in loaded.plans.values()) and any(p.group_size for p in loaded.plans.values())
    GPT(cfg.model).load_state_dict(loaded.state, strict=True)


def test_best_keeps_the_smallest_codec(tmp_path: Path) -> None:
    cfg = small_config(compressor="best")
    res = export(tmp_path / "best.ptz", trained_like(cfg), cfg)
    header = {"meta": {"code_bytes": 0}, "model_config": config_to_dict(cfg.model), "run_config": config_to_dict(cfg)}
    blob, name = pack.pack(res.fit.quantized, pack.codec_choices("best", 0), **header)
    sizes = {c: len(pack.pack(res.fit.quantized, [(c, lv)], **header)[0]) for c, lv in pack.BEST_LEVELS.items()}
    assert len(blob) == min(sizes.values()) == sizes[name]
    assert res.fit.compressor == name


def test_configs_meta_and_info_roundtrip(tmp_path: Path) -> None:
    cfg = small_config()
    res = export(tmp_path / "sub" / "a.ptz", trained_like(cfg), cfg, extra_meta={"steps": 3})  # parent created
    loaded = read_artifact(res.info.path)
    assert loaded.model_config == config_to_dict(cfg.model)
    assert loaded.run_config == json.loads(json.dumps(config_to_dict(cfg)))  # tuples come back as lists
    data = res.info.path.read_bytes()
    assert res.info.model_bytes == len(data) == loaded.info.model_bytes
    assert res.info.sha256 == hashlib.sha256(data).hexdigest() == loaded.meta["file_sha256"] == loaded.info.sha256
    assert res.info.code_bytes == CODE_BYTES == loaded.meta["code_bytes"] == loaded.info.code_bytes
    assert res.info.total_bytes == res.info.model_bytes + CODE_BYTES == loaded.info.total_bytes
    assert loaded.meta["extra_meta"] == {"steps": 3}
    assert read_artifact(res.info.path, code_bytes=7).info.total_bytes == len(data) + 7


@pytest.mark.parametrize("quant", [{}, {**RICH, "packing": "int8", "prune": True}], ids=["baseline", "rich-pruned"])
def test_same_inputs_give_identical_bytes(tmp_path: Path, quant: dict) -> None:
    cfg = small_config(**quant)
    budget = 10_000_000
    if quant:  # a budget that makes the pruning search run
        budget = export(tmp_path / "probe.ptz", trained_like(cfg), with_quant(cfg, prune=False)).info.total_bytes - 200
    a = export(tmp_path / "a.ptz", trained_like(cfg), cfg, budget=budget)
    b = export(tmp_path / "b.ptz", trained_like(cfg), cfg, budget=budget)
    assert a.info.path.read_bytes() == b.info.path.read_bytes()
    assert not quant or a.fit.pruned > 0


# ---------------------------------------------------------------- no pickle

def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config()
    path = export(tmp_path / "a.ptz", trained_like(cfg), cfg).info.path

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle/torch.load was called")

    class RefusingUnpickler(pickle.Unpickler):  # still a class: a module first imported here may subclass it
        def __init__(self, *args: object, **kwargs: object) -> None:
            refuse()

    # (a plain function in its place made torch 2.11's first `import torch._dynamo`, reached from inside
    # read_artifact, fail half-way and poisoned every later test of the process that compiles)
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    assert read_artifact(path).state.keys() == trained_like(cfg).state_dict().keys()


def test_models_are_checked_on_the_meta_device_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config()
    path = export(tmp_path / "a.ptz", trained_like(cfg), cfg).info.path
    devices = []
    real_init = GPT.__init__

    def spy(self: GPT, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        devices.append(self.tok_emb.weight.device.type)

    monkeypatch.setattr(GPT, "__init__", spy)
    artifact._expected_state.cache_clear()
    read_artifact(path)
    assert devices and set(devices) == {"meta"}


# ---------------------------------------------------------------- corruption as stored

@pytest.fixture()
def stored(tmp_path: Path) -> Path:
    cfg = small_config()
    return export(tmp_path / "a.ptz", trained_like(cfg), cfg).info.path


def test_missing_file(tmp_path: Path) -> None:
    assert_user_error(tmp_path / "nope.ptz", "does not exist")


def test_flipped_payload_byte(stored: Path) -> None:
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert "re-export it" in assert_user_error(stored, "checksum")


@pytest.mark.parametrize("keep", [3, 12, 40, 70, -1])
def test_truncated(stored: Path, keep: int) -> None:
    stored.write_bytes(stored.read_bytes()[:keep])
    assert_user_error(stored, "not a pgolf artifact|truncated|checksum")


def test_bad_magic(stored: Path) -> None:
    stored.write_bytes(b"XGOLFAR1" + stored.read_bytes()[8:])
    assert "torch.save" in assert_user_error(stored, "not a pgolf artifact")


def test_torch_saved_files_are_refused_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    pt = tmp_path / "model.pt"
    pt.write_bytes(buf.getvalue())
    assert "torch.save" in assert_user_error(pt, "not a pgolf artifact")
    ptz = tmp_path / "final_model.int8.ptz"  # the baseline's format: zlib(torch.save(...))
    ptz.write_bytes(zlib.compress(buf.getvalue(), 9))
    assert_user_error(ptz, "not a pgolf artifact")


def rebuild(path: Path, compressor: str, payload: bytes, raw_len: int, version: int = artifact.FORMAT_VERSION) -> None:
    header = artifact.pack_header(compressor, b"", payload, raw_len=raw_len)
    path.write_bytes(header[:8] + struct.pack("<I", version) + header[12:] + payload)


def test_format_version_1_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "a.ptz"
    rebuild(path, "zlib", b"x", 1, version=1)
    assert_user_error(path, "format version 1, this pgolf reads version 2")


def test_unknown_compressor(tmp_path: Path) -> None:
    path = tmp_path / "a.ptz"
    rebuild(path, "zpaq", b"x", 1)
    assert_user_error(path, "unknown compressor 'zpaq'")


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "brotli", "lzma"])
def test_payload_that_does_not_decompress(tmp_path: Path, compressor: str) -> None:
    path = tmp_path / "a.ptz"
    rebuild(path, compressor, b"definitely not compressed data" * 3, 500)
    assert_user_error(path, f"does not decompress with {compressor}|short of the 500 bytes")


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "brotli", "lzma"])
def test_truncated_stream_with_recomputed_checksum(tmp_path: Path, compressor: str) -> None:
    raw = bytes(range(256)) * 40
    full = pack.compress(raw, compressor, 5)
    path = tmp_path / "a.ptz"
    rebuild(path, compressor, full[: len(full) * 2 // 3], len(raw))
    assert_user_error(path, "does not decompress|short of")


def test_changed_content_fails_the_inner_checksum(stored: Path) -> None:
    # a payload recompressed after a change, with only the outer checksum recomputed
    blob = stored.read_bytes()
    header = artifact.unpack_header(stored, blob)
    raw = bytearray(artifact.read_payload(stored, header))
    raw[-1] ^= 1
    outer = artifact.pack_header("none", bytes(raw), bytes(raw))
    stored.write_bytes(outer[:-32] + header.raw_sha256 + bytes(raw))
    assert_user_error(stored, "fails its sha256")


# ---------------------------------------------------------------- loading side and budget

def test_scoring_modules_are_the_loading_side_only() -> None:
    import pgolf

    root = Path(pgolf.__file__).resolve().parent
    assert all((root / rel).is_file() for rel in SCORING_MODULES), "SCORING_MODULES names a missing file"
    assert len(set(SCORING_MODULES)) == len(SCORING_MODULES)
    assert {"artifact.py", "quant/layout.py", "model/gpt.py", "eval/bpb.py", "tokenizer.py"} <= set(SCORING_MODULES)
    # the writing side does not ship with the scorer
    assert not {"quant/gptq.py", "quant/fit.py", "quant/pack.py", "quant/int8.py"} & set(SCORING_MODULES)


def test_check_budget(stored: Path) -> None:
    info = read_artifact(stored).info
    check_budget(info, info.total_bytes)  # exactly at the cap is allowed
    with pytest.raises(UserError) as exc:
        check_budget(info, info.total_bytes - 5)
    message = str(exc.value)
    assert str(info.path) in message and "over the" in message and "by 5;" in message
    assert f"code {info.code_bytes:,} + model {info.model_bytes:,}" in message
    assert "--budget.artifact_max_bytes" in message


# ---------------------------------------------------------------- atomic writes

def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    cfg = small_config()
    export(tmp_path / "a.ptz", trained_like(cfg), cfg)
    export(tmp_path / "a.ptz", trained_like(cfg, seed=1), cfg)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ptz"]


@pytest.mark.parametrize("failure", ["replace", "compress"])
def test_failed_write_keeps_the_existing_artifact(stored: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    before = stored.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(*(os, "replace") if failure == "replace" else (pack, "compress"), boom)
    cfg = small_config()
    with pytest.raises(OSError, match="disk full"):
        export(stored, trained_like(cfg, seed=2), cfg)
    assert stored.read_bytes() == before
    assert sorted(p.name for p in stored.parent.iterdir()) == ["a.ptz"]
