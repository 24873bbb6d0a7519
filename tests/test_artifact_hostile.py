"""Hostile artifacts (issue 10): files whose checksum was recomputed after a lie — configs of the wrong type
or size, plans that disagree with the model, codes out of range, bad scales, NaN floats, broken framing —
and decompression bombs. Every one must end in a one-line UserError naming the file (and the field or
tensor), and nothing may be allocated beyond the bounds."""

from __future__ import annotations

import json
import math
import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brotli
import pytest
import torch
import zstandard
from helpers_quant import export, small_config, trained_like

from pgolf import artifact
from pgolf.artifact import pack_header, payload_bytes, read_artifact
from pgolf.errors import UserError
from pgolf.quant import pack
from pgolf.quant.layout import TensorPlan, stream_nbytes

Header = dict[str, Any]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact with every stream kind: int8 codes and fp16 scales, fp32 controls, fp16 small floats."""
    cfg = small_config(scheme="intx", keep_float_max_numel=256, matrix_bits=6, compressor="none")
    return export(tmp_path_factory.mktemp("hostile") / "a.ptz", trained_like(cfg), cfg).info.path


def open_payload(path: Path) -> tuple[Header, bytes]:
    blob = path.read_bytes()
    raw = artifact.read_payload(path, artifact.unpack_header(path, blob))
    header, data = artifact.parse_payload(path, raw)
    return header, bytes(data)


def write_payload(path: Path, raw: bytes, compressor: str = "none") -> Path:
    """The payload written as a file with both checksums recomputed (a careful liar)."""
    payload = pack.compress(raw, compressor, 1)
    path.write_bytes(pack_header(compressor, raw, payload) + payload)
    return path


def rewrite(original: Path, out: Path, edit: Callable[[Header, bytearray], bytes | None]) -> Path:
    """Apply `edit` to a copy of the header and data (it may return a whole new raw payload)."""
    header, data = open_payload(original)
    buf = bytearray(data)
    raw = edit(header, buf)
    if not isinstance(raw, bytes):
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()  # NaN allowed here on purpose
        raw = struct.pack("<I", len(text)) + text + bytes(buf)
    return write_payload(out, raw)


def refused(path: Path, match: str = "", **kwargs: Any) -> str:
    with pytest.raises(UserError) as info:
        read_artifact(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert match in message, message
    return message


def plan_of(header: Header, name: str) -> dict[str, Any]:
    return dict(header["tensors"])[name]


def stream_offset(header: Header, name: str, part: str) -> int:
    offset = 0
    plans = {n: TensorPlan(**{**p, "shape": tuple(p["shape"]), "clip_values": tuple(p["clip_values"])})
             for n, p in header["tensors"]}
    for n, pt in header["layout"]:
        if (n, pt) == (name, part):
            return offset
        offset += stream_nbytes(plans[n], pt)
    raise KeyError((name, part))


def test_the_original_loads(original: Path) -> None:
    loaded = read_artifact(original)
    kinds = {p.kind for p in loaded.plans.values()}
    assert kinds == {"intx_row", "float"}


# ---------------------------------------------------------------- configs

def set_model(field: str, value: Any, also_run: bool = True) -> Callable[[Header, bytearray], None]:
    def edit(h: Header, _: bytearray) -> None:
        h["model_config"][field] = value
        if also_run:
            h["run_config"]["model"][field] = value
    return edit


def set_run(section: str, field: str, value: Any) -> Callable[[Header, bytearray], None]:
    def edit(h: Header, _: bytearray) -> None:
        h["run_config"][section][field] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (set_model("num_heads", "abc"), "model_config.num_heads"),
    (set_model("num_layers", 3), "lacks tensor 'blocks.2"),
    (set_model("num_layers", 1000), "model_config implies about"),
    (set_model("num_layers", 10_000), "stored model_config: model.num_layers=10000 must be in 1..1024"),
    (set_model("model_dim", 16_384), "model_config implies about"),
    (set_model("rope_base", math.nan), "model_config.rope_base"),
    (set_model("vocab_size", -5), "stored model_config: model.vocab_size=-5"),
    (set_model("num_layers", 3, also_run=False), "run_config.model differs from model_config"),
    (set_run("data", "tokenizer_path", 5), "run_config.data.tokenizer_path"),
    (set_run("budget", "artifact_max_bytes", "abc"), "run_config.budget.artifact_max_bytes"),
    (set_run("quant", "matrix_bits", 99), "quant.matrix_bits=99"),
    (set_run("quant", "surprise", 1), "unknown field 'surprise'"),
], ids=["heads-str", "layers-3", "layers-1000", "layers-10000", "dim-16384", "rope-nan", "vocab-negative",
        "run-model-differs", "tokenizer-int", "budget-str", "bits-99", "unknown-field"])
def test_config_lies_are_named(original: Path, tmp_path: Path, edit: Callable, match: str) -> None:
    refused(rewrite(original, tmp_path / "b.ptz", edit), match)


@pytest.mark.parametrize("edit,match", [
    (lambda h, d: h.__setitem__("format", 3), "header format 3"),
    (lambda h, d: h.pop("layout"), "exactly the keys"),
    (lambda h, d: h["meta"].__setitem__("code_bytes", -1), "meta.code_bytes"),
    (lambda h, d: h["meta"].__setitem__("code_bytes", "12"), "meta.code_bytes"),
    (lambda h, d: h.__setitem__("meta", []), "meta is not an object"),
    (lambda h, d: h.__setitem__("tensors", {}), "tensors is not a list"),
    (lambda h, d: h["tensors"].append(h["tensors"][0]), "stored twice"),
    (lambda h, d: h["layout"].append(h["layout"][0]), "exactly once"),
    (lambda h, d: h["layout"].pop(), "exactly once"),
    (lambda h, d: d.extend(b"\0" * 8), "after the last stream"),
    (lambda h, d: d.__delitem__(slice(-3, None)), "runs past the end"),
], ids=["format", "missing-key", "code-bytes-negative", "code-bytes-str", "meta-list", "tensors-dict", "twice",
        "layout-duplicate", "layout-missing", "trailing-bytes", "short-data"])
def test_framing_lies_are_named(original: Path, tmp_path: Path, edit: Callable, match: str) -> None:
    refused(rewrite(original, tmp_path / "b.ptz", edit), match)


@pytest.mark.parametrize("raw,match", [
    (b"\x01", "shorter than its header length"),
    (struct.pack("<I", 10**6) + b"{}", "header length"),
    (struct.pack("<I", 4) + b"{not", "not JSON"),
    (struct.pack("<I", 4) + b"\xff\xfe{}", "not JSON"),
    (struct.pack("<I", 200_000) + b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (struct.pack("<I", 2) + b"[]", "exactly the keys"),
])
def test_broken_payloads_are_one_line(tmp_path: Path, raw: bytes, match: str) -> None:
    refused(write_payload(tmp_path / "b.ptz", raw), match)


# ---------------------------------------------------------------- plans

def set_plan(name: str, **fields: Any) -> Callable[[Header, bytearray], None]:
    def edit(h: Header, _: bytearray) -> None:
        plan_of(h, name).update(fields)
    return edit


MATRIX = "blocks.0.mlp.fc.weight"
CONTROL = "blocks.0.attn_scale"


@pytest.mark.parametrize("edit,match", [
    (set_plan(MATRIX, dtype="float16"), "is float16[64, 32], the model's is float32[64, 32]"),
    (set_plan(MATRIX, dtype="complex64"), "dtype"),
    (set_plan(MATRIX, shape=[64, 64]), f"tensor '{MATRIX}' is float32[64, 64]"),
    (set_plan(MATRIX, shape=[-1, 32]), "shape"),
    (set_plan(MATRIX, shape=[2**30, 2]), "exceed the bound of 64 per file byte"),
    (set_plan(MATRIX, bits=2), "outside [-1, 1]"),
    (set_plan(MATRIX, bits=9), "bits=9"),
    (set_plan(MATRIX, bits="6"), "bits"),
    (set_plan(MATRIX, kind="float"), "a float or passthrough tensor has bits"),
    (set_plan(MATRIX, scale_dtype="float32"), "payload"),
    (set_plan(MATRIX, group_size=5), "group_size=5"),
    (set_plan(MATRIX, lqer_rank=2, lqer_group_size=16), "layout"),
    (set_plan(MATRIX, packing="bitpack"), "payload"),
    (set_plan(MATRIX, extra=1), "unknown field 'extra'"),
    (lambda h, d: plan_of(h, MATRIX).pop("bits"), "lacks field 'bits'"),
    (set_plan(CONTROL, store_dtype="float16"), "payload"),
    (set_plan(CONTROL, kind="passthrough"), CONTROL),
], ids=["dtype-lie", "dtype-unknown", "shape-lie", "shape-negative", "shape-huge", "bits-lie", "bits-9", "bits-str",
        "kind-lie", "scale-dtype-lie", "group-lie", "lqer-lie", "packing-lie", "extra-field", "missing-field",
        "store-dtype-lie", "control-passthrough"])
def test_plan_lies_are_named(original: Path, tmp_path: Path, edit: Callable, match: str) -> None:
    message = refused(rewrite(original, tmp_path / "b.ptz", edit), match)
    assert "re-export it" in message


# ---------------------------------------------------------------- values

def poke(name: str, part: str, index: int, value: bytes) -> Callable[[Header, bytearray], None]:
    def edit(h: Header, d: bytearray) -> None:
        at = stream_offset(h, name, part) + index * len(value)
        d[at:at + len(value)] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (poke(MATRIX, "q", 7, b"\x80"), "codes outside [-31, 31]"),
    (poke(MATRIX, "q", 0, b"\x20"), "codes outside [-31, 31]"),
    (poke(MATRIX, "scale", 3, struct.pack("<e", math.nan)), "non-finite"),
    (poke(MATRIX, "scale", 3, struct.pack("<e", math.inf)), "non-finite"),
    (poke(MATRIX, "scale", 3, struct.pack("<e", 0.0)), "not positive"),
    (poke(MATRIX, "scale", 3, struct.pack("<e", -0.5)), "not positive"),
    (poke(CONTROL, "value", 2, struct.pack("<f", math.nan)), "non-finite"),
    (poke(CONTROL, "value", 2, struct.pack("<f", -math.inf)), "non-finite"),
], ids=["code-minus-128", "code-32", "scale-nan", "scale-inf", "scale-zero", "scale-negative", "float-nan",
        "float-inf"])
def test_value_lies_name_the_tensor(original: Path, tmp_path: Path, edit: Callable, match: str) -> None:
    message = refused(rewrite(original, tmp_path / "b.ptz", edit), match)
    assert MATRIX in message or CONTROL in message


# ---------------------------------------------------------------- bombs

GiB_ZEROS = 40 * (64 << 20)  # 2.5 GiB of zeros


def zlib_bomb() -> bytes:
    """A valid zlib stream of 2.5 GiB of zeros (2.6 MB): full flushes make each 64 MiB block repeatable."""
    chunk = bytes(64 << 20)
    c = zlib.compressobj(9)
    head = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    unit = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()[:-4]  # the final empty block; the checksum below covers all 40 chunks
    adler = ((GiB_ZEROS % 65521) << 16) | 1  # adler32 of n zeros: a = 1, b = n mod 65521
    return head + unit * 38 + end + struct.pack(">I", adler)


def stream_bomb(compressor: str) -> bytes:
    chunk = bytes(64 << 20)
    if compressor == "zlib":
        return zlib_bomb()
    if compressor == "zstd":
        c = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join(c.compress(chunk) for _ in range(40)) + c.flush()
    if compressor == "brotli":
        b = brotli.Compressor(quality=1)
        return b"".join(b.process(chunk) for _ in range(40)) + b.finish()
    return pack.compress(chunk, "lzma", 0)  # 64 MiB: xz is too slow to build more in a unit test


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {c: stream_bomb(c) for c in ("zlib", "zstd", "brotli", "lzma")}


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "brotli", "lzma"])
def test_declared_bomb_is_refused_before_decompressing(bombs: dict[str, bytes], tmp_path: Path, compressor: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = bombs[compressor]
    path = tmp_path / "bomb.ptz"
    path.write_bytes(pack_header(compressor, b"", bomb, raw_len=GiB_ZEROS) + bomb)
    monkeypatch.setattr(artifact, "decompress_bounded", lambda *a: pytest.fail("decompressed"))
    refused(path, f"declared uncompressed size {GiB_ZEROS:,} exceeds the bound")


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "brotli", "lzma"])
def test_lying_bomb_stops_at_the_bound(bombs: dict[str, bytes], tmp_path: Path, compressor: str) -> None:
    bomb = bombs[compressor]
    assert len(bomb) < 3_000_000  # 2.5 GiB (lzma: 64 MiB) from a few KB to 2.6 MB
    path = tmp_path / "bomb.ptz"
    path.write_bytes(pack_header(compressor, b"", bomb, raw_len=100_000) + bomb)
    tracemalloc.start()
    try:
        refused(path, "actual uncompressed size exceeds the bound of 100,000 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(bomb) + 8 * 2**20, peak


def test_files_over_the_bound_are_not_read(original: Path) -> None:
    refused(original, "exceeds the bound of 1,000 bytes", max_file_bytes=1000)
    refused(original, "exceeds the bound of 100 bytes", max_raw_bytes=100)


# ---------------------------------------------------------------- fuzz

def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)) for k in a)


def check_outcome(path: Path, reference: dict[str, torch.Tensor]) -> str:
    """'error' (a one-line UserError naming the file) or 'identical'; anything else fails the test."""
    try:
        loaded = read_artifact(path)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message, message
        return "error"
    assert same_state(loaded.state, reference), "a mutant loaded with different weights"
    return "identical"


LEAF_VALUES = [None, True, -1, 0, 2**40, 1e308, -0.5, "x", "float16", [], {}, [1, 2]]


def mutate_json(header: Header, rng: random.Random) -> None:
    """Replace one randomly chosen leaf of the header with a value of some other type or range."""
    node: Any = header
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.85:
            node = child
            continue
        node[key] = rng.choice(LEAF_VALUES)
        return


def outer_checksum_only(path: Path, raw: bytes, original_raw: bytes, compressor: str) -> Path:
    """A mutant whose outer checksum was recomputed but whose content digest is the original's."""
    payload = pack.compress(raw, compressor, 1)
    header = pack_header(compressor, raw, payload)
    digest = pack_header(compressor, original_raw, b"")[-32:]
    path.write_bytes(header[:-32] + digest + payload)
    return path


def mutants(raw: bytes, text: bytes, data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Byte flips anywhere, one header leaf of another type or range, truncations and extensions."""
    out = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            buf = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            out.append(bytes(buf))
        elif kind == 1:
            h = json.loads(text)
            mutate_json(h, rng)
            out.append(payload_bytes(h, [data]) if _json_ok(h) else raw[:-1])
        else:
            cut = rng.randrange(len(raw))
            out.append(raw[:cut] if rng.random() < 0.5 else raw + bytes(rng.randrange(1, 64)))
    return out


def test_fuzzed_artifacts_fail_cleanly_or_load_identically(original: Path, tmp_path: Path) -> None:
    # As issue 10 fuzzes: mutants of a real artifact with the (outer) checksum recomputed.
    rng = random.Random(0)
    reference = read_artifact(original).state
    header, data = open_payload(original)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw = struct.pack("<I", len(text)) + text + data
    outcomes = {"error": 0, "identical": 0}
    for i, mutant in enumerate(mutants(raw, text, data, rng, 150)):
        path = outer_checksum_only(tmp_path / "m.ptz", mutant, raw, "zlib" if i % 10 == 0 else "none")
        outcomes[check_outcome(path, reference)] += 1
    assert outcomes["error"] >= 140, outcomes


def test_careful_liars_get_one_line_errors_or_a_checked_load(original: Path, tmp_path: Path) -> None:
    # Both checksums recomputed: a mutant may load (an in-range code is a valid artifact), but only with the
    # model's names, shapes and dtypes and finite values; every other outcome is a one-line UserError.
    rng = random.Random(1)
    expected = {k: (v.shape, v.dtype) for k, v in read_artifact(original).state.items()}
    header, data = open_payload(original)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw = struct.pack("<I", len(text)) + text + data
    for mutant in mutants(raw, text, data, rng, 120):
        path = write_payload(tmp_path / "m.ptz", mutant)
        try:
            state = read_artifact(path).state
        except UserError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            continue
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == expected
        assert all(bool(torch.isfinite(v).all()) for v in state.values())


def _json_ok(h: Header) -> bool:
    try:
        json.dumps(h, allow_nan=False)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("fields", [dict(value_embed_layers=(6, 7)), dict(num_loops=1, loop_start=2, loop_end=4),
                                    dict(parallel_residual="gptj", parallel_from=6)])
def test_parameter_prefilter_handles_features_indexed_by_layer(fields: dict) -> None:
    # The pre-filter sizes small versions of the model; features naming deep layers must not make it refuse.
    import dataclasses

    from pgolf.artifact import estimated_params
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT

    cfg = dataclasses.replace(ModelConfig(vocab_size=64, num_layers=8, model_dim=32, num_heads=2, num_kv_heads=1),
                              **fields)
    cfg.validate()
    exact = sum(p.numel() for p in GPT(cfg).parameters())
    assert 0.5 * exact <= estimated_params(cfg) <= 1.5 * exact  # a pre-filter at 2x the bound needs no more
