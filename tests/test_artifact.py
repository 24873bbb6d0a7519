"""The artifact container: exact roundtrip, no pickle, every corruption a one-line error, counted bytes, atomicity."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pgolf import artifact
from pgolf.artifact import (COMPRESSORS, COUNTED_MODULES, check_budget, count_code_bytes, counted_code_files,
                            read_artifact, write_artifact)
from pgolf.config import ConfigError, ModelConfig, QuantConfig, RunConfig, config_to_dict
from pgolf.errors import UserError
from pgolf.quant.int8 import dequantize_state_dict_int8, quantize_state_dict_int8

PATTERNS = ("attn_scale", "resid_mix")


def fake_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tok_emb.weight": torch.randn(64, 32, generator=g) * 0.02,
        "blocks.0.attn.c_q.weight": torch.randn(32, 32, generator=g),
        "blocks.0.mlp.fc.weight": torch.randn(64, 32, generator=g).to(torch.bfloat16),
        "blocks.0.attn_scale": torch.rand(32, generator=g),
        "blocks.0.resid_mix": torch.rand(2, 32, generator=g),
        "blocks.0.norm.weight": torch.randn(32, generator=g),
        "conv.weight": torch.randn(4, 8, 16, generator=g),
        "step": torch.tensor(12, dtype=torch.int64),
    }


def quant(compressor: str = "zlib", level: int = 9) -> QuantConfig:
    return QuantConfig(keep_float_max_numel=256, compressor=compressor, level=level)  # type: ignore[arg-type]


def write(path: Path, compressor: str = "zlib", state: dict[str, torch.Tensor] | None = None) -> artifact.ArtifactInfo:
    state = state if state is not None else fake_state()
    return write_artifact(path, state, model_config=config_to_dict(ModelConfig()),
                          run_config=config_to_dict(RunConfig(name="t")), quant=quant(compressor),
                          keep_fp32_patterns=PATTERNS, extra_meta={"steps": 3})


def assert_user_error(path: Path, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        read_artifact(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# ---------------------------------------------------------------- roundtrip

@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_roundtrip_is_bit_exact_with_in_memory_dequantisation(tmp_path: Path, compressor: str) -> None:
    state = fake_state()
    info = write(tmp_path / "a.ptz", compressor, state)
    loaded = read_artifact(info.path)
    expected = dequantize_state_dict_int8(*quantize_state_dict_int8(state, quant(compressor), PATTERNS))
    assert loaded.state.keys() == state.keys()
    for name, t in expected.items():
        got = loaded.state[name]
        assert got.dtype == state[name].dtype and got.shape == state[name].shape
        assert torch.equal(got.view(-1).view(torch.uint8) if got.dtype.is_floating_point else got,
                           t.view(-1).view(torch.uint8) if t.dtype.is_floating_point else t), name
    assert loaded.meta["compressor"] == compressor
    assert loaded.meta["quant"]["tensors"]["blocks.0.mlp.fc.weight"]["kind"] == "int8_row"


def test_configs_meta_and_info_roundtrip(tmp_path: Path) -> None:
    info = write(tmp_path / "sub" / "a.ptz")  # the parent folder is created
    loaded = read_artifact(info.path)
    assert loaded.model_config == config_to_dict(ModelConfig())
    assert loaded.run_config == config_to_dict(RunConfig(name="t"))
    data = info.path.read_bytes()
    assert info.model_bytes == len(data) == loaded.info.model_bytes
    assert info.sha256 == hashlib.sha256(data).hexdigest() == loaded.meta["file_sha256"] == loaded.info.sha256
    assert info.code_bytes == count_code_bytes() == loaded.meta["code_bytes"] == loaded.info.code_bytes
    assert info.total_bytes == info.model_bytes + info.code_bytes
    assert loaded.meta["counted_files"] == info.counted_files == counted_code_files()
    assert loaded.meta["extra_meta"] == {"steps": 3}
    assert loaded.meta["format_version"] == artifact.FORMAT_VERSION


def test_writing_is_deterministic(tmp_path: Path) -> None:
    a, b = write(tmp_path / "a.ptz"), write(tmp_path / "b.ptz")
    assert a.path.read_bytes() == b.path.read_bytes()


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_codecs_roundtrip(compressor: str) -> None:
    data = b"parameter golf " * 1000 + bytes(range(256))
    packed = artifact.compress(data, compressor, 5)
    assert artifact.decompress(packed, compressor) == data
    if compressor != "none":
        assert len(packed) < len(data)


def test_bad_codec_settings_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="quant.level"):
        artifact.compress(b"x", "zlib", 12)
    with pytest.raises(ConfigError, match="quant.compressor"):
        artifact.compress(b"x", "gzip", 9)


# ---------------------------------------------------------------- no pickle

def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "a.ptz").path

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle/torch.load was called")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = read_artifact(path)
    assert loaded.state["step"].item() == 12


def test_payload_is_safetensors_not_pickle(tmp_path: Path) -> None:
    data = write(tmp_path / "a.ptz", "none").path.read_bytes()
    assert data.startswith(artifact.MAGIC)
    _, payload = artifact.unpack_header(tmp_path / "a.ptz", data)
    assert not payload.startswith((b"\x80", b"PK\x03\x04"))  # pickle protocol header, torch.save zip
    (header_len,) = struct.unpack_from("<Q", payload)
    assert payload[8:10] == b'{"' and header_len < len(payload)
    assert b"\x80\x04" not in payload[:16]
    assert "pgolf_meta" in artifact.read_safetensors_metadata(payload)


# ---------------------------------------------------------------- corruption

def test_missing_file(tmp_path: Path) -> None:
    assert_user_error(tmp_path / "nope.ptz", "does not exist")


def test_flipped_payload_byte(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ptz").path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "re-export it" in assert_user_error(path, "checksum")


@pytest.mark.parametrize("keep", [3, 12, 40, -1])
def test_truncated(tmp_path: Path, keep: int) -> None:
    path = write(tmp_path / "a.ptz").path
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    assert_user_error(path, "not a pgolf artifact|truncated|checksum")


def test_bad_magic(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ptz").path
    path.write_bytes(b"XGOLFAR1" + path.read_bytes()[8:])
    assert "torch.save" in assert_user_error(path, "not a pgolf artifact")


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


def _rebuild(path: Path, compressor: str, payload: bytes, version: int = artifact.FORMAT_VERSION) -> None:
    name = compressor.encode()
    header = struct.pack("<8sIB", artifact.MAGIC, version, len(name)) + name
    path.write_bytes(header + struct.pack("<Q32s", len(payload), hashlib.sha256(payload).digest()) + payload)


def test_unknown_format_version(tmp_path: Path) -> None:
    path = tmp_path / "a.ptz"
    _rebuild(path, "zlib", b"x", version=99)
    assert_user_error(path, "format version 99")


def test_unknown_compressor(tmp_path: Path) -> None:
    path = tmp_path / "a.ptz"
    _rebuild(path, "zpaq", b"x")
    assert_user_error(path, "unknown compressor 'zpaq'")


def test_payload_that_does_not_decompress(tmp_path: Path) -> None:
    path = tmp_path / "a.ptz"
    _rebuild(path, "zlib", b"definitely not zlib data")
    assert_user_error(path, "does not decompress with zlib")


@pytest.mark.parametrize("metadata", [
    None,
    {"pgolf_meta": "{not json", "model_config": "{}", "run_config": "{}"},
    {"pgolf_meta": "{}", "model_config": "{}", "run_config": "{}"},
    {"pgolf_meta": '{"quant": {"tensors": {"w": {"kind": "int8_row", "dtype": "float32", "shape": [2, 2]}}}}',
     "model_config": "{}", "run_config": "{}"},
])
def test_malformed_metadata(tmp_path: Path, metadata: dict[str, str] | None) -> None:
    path = tmp_path / "a.ptz"
    _rebuild(path, "none", safetensors.torch.save({"x": torch.zeros(2)}, metadata=metadata))
    assert_user_error(path, "malformed")


def test_garbage_safetensors_payload(tmp_path: Path) -> None:
    path = tmp_path / "a.ptz"
    _rebuild(path, "none", struct.pack("<Q", 10**12) + b"{}")
    assert_user_error(path, "malformed")


# ---------------------------------------------------------------- counted bytes and budget

def test_counted_modules_exist() -> None:
    missing = artifact.missing_counted_modules()
    assert not missing, f"COUNTED_MODULES lists files not yet in src/pgolf: {missing}"


def test_counted_code_bytes_are_the_listed_files_sizes() -> None:
    root = artifact.package_dir()
    files = counted_code_files()
    assert list(files) == list(COUNTED_MODULES)
    assert len(set(COUNTED_MODULES)) == len(COUNTED_MODULES)
    for rel, size in files.items():
        assert size == len((root / rel).read_text(encoding="utf-8").encode("utf-8")), rel
    assert count_code_bytes() == sum(files.values())
    assert {"artifact.py", "quant/int8.py", "model/gpt.py", "eval/bpb.py", "tokenizer.py"} <= set(files)


def test_check_budget(tmp_path: Path) -> None:
    info = write(tmp_path / "a.ptz")
    check_budget(info, info.total_bytes)  # exactly at the cap is allowed
    check_budget(info, 16_000_000)
    with pytest.raises(UserError) as exc:
        check_budget(info, info.total_bytes - 5)
    message = str(exc.value)
    assert str(info.path) in message and "over the" in message and "by 5;" in message
    assert f"code {info.code_bytes:,} + model {info.model_bytes:,}" in message
    assert "--budget.artifact_max_bytes" in message


# ---------------------------------------------------------------- atomic writes

def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    write(tmp_path / "a.ptz")
    write(tmp_path / "a.ptz")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ptz"]


@pytest.mark.parametrize("failure", ["replace", "compress"])
def test_failed_write_keeps_the_existing_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  failure: str) -> None:
    path = write(tmp_path / "a.ptz").path
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    if failure == "replace":
        monkeypatch.setattr(os, "replace", boom)
    else:
        monkeypatch.setattr(artifact, "compress", boom)
    state = fake_state()
    state["tok_emb.weight"] = state["tok_emb.weight"] * 2
    with pytest.raises(OSError, match="disk full"):
        write(path, state=state)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ptz"]


def test_safetensors_metadata_order_is_canonical() -> None:
    raw = safetensors.torch.save({"x": torch.zeros(3)}, metadata={k: k for k in "qwertyuiop"})
    canon = artifact.canonical_safetensors(raw)
    assert list(artifact.read_safetensors_metadata(canon)) == sorted("qwertyuiop")
    assert struct.unpack_from("<Q", canon)[0] % 8 == 0
    assert torch.equal(safetensors.torch.load(canon)["x"], torch.zeros(3))
    assert len({artifact.canonical_safetensors(safetensors.torch.save({"x": torch.zeros(3)},
                                                                      metadata={k: k for k in "qwertyuiop"}))
                for _ in range(5)}) == 1
