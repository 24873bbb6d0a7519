"""Hostile artifacts (issue 10): files whose checksum was recomputed after a lie — configs of the wrong type
or size, plans that disagree with the model, codes out of range, bad scales, NaN floats, broken framing —
and decompression bombs. Every one must end in a one-line UserError naming the file (and the field or
tensor), and nothing may be allocated beyond the bounds."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import struct
import subprocess
import sys
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
from pgolf.artifact import pack_header, read_artifact
from pgolf.config import run_config_from_dict
from pgolf.errors import UserError
from pgolf.quant import pack
from pgolf.quant.layout import TensorPlan, stream_nbytes

Header = dict[str, Any]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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


def test_an_artifact_from_before_an_added_field_reads_it_as_the_old_behaviour(original: Path, tmp_path: Path) -> None:
    # eval.compile came after artifacts were first written: one without it loads, as False; a field
    # that was always there is still required
    older = rewrite(original, tmp_path / "older.ptz", lambda h, _: h["run_config"]["eval"].pop("compile"))
    assert "compile" not in read_artifact(older).run_config["eval"]  # the stored dict, as written
    assert run_config_from_dict(read_artifact(older).run_config).eval.compile is False
    no_steps = rewrite(original, tmp_path / "steps.ptz", lambda h, _: h["run_config"]["ttt"].pop("lora_steps"))
    assert run_config_from_dict(read_artifact(no_steps).run_config).ttt.lora_steps == 1  # one step, as before
    refused(rewrite(original, tmp_path / "c.ptz", lambda h, _: h["run_config"]["eval"].pop("stride")),
            "run_config.eval lacks field 'stride'")


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
    (lambda h, d: h["layout"][0].__setitem__(1, ["q"]), "layout is not a list of [tensor, part] pairs"),
    (lambda h, d: h["layout"][0].__setitem__(0, {}), "layout is not a list of [tensor, part] pairs"),
    (lambda h, d: d.extend(b"\0" * 8), "after the last stream"),
    (lambda h, d: d.__delitem__(slice(-3, None)), "runs past the end"),
], ids=["format", "missing-key", "code-bytes-negative", "code-bytes-str", "meta-list", "tensors-dict", "twice",
        "layout-duplicate", "layout-missing", "layout-part-list", "layout-name-dict", "trailing-bytes", "short-data"])
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

@pytest.fixture(scope="module")
def fuzz(monkeypatch_module: pytest.MonkeyPatch) -> Any:
    """The loader fuzz of benchmarks/fuzz_artifact.py (the benchmark runs the same harness with >= 10,000)."""
    monkeypatch_module.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("fuzz_artifact")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


FUZZ_PER_CATEGORY = 20


def test_fuzzed_artifacts_fail_cleanly_or_load_identically(fuzz: Any, tmp_path: Path) -> None:
    # Every category of mutant of two real artifacts (as stored; outer checksum recomputed, codec streams
    # flipped; both digests recomputed; bombs), each loaded in a worker process with a deadline (a hang is a
    # finding) and its peak RSS and tracemalloc peak checked against the bounds. Allowed: a one-line UserError
    # naming the file, a bit-identical load, and for careful liars (both digests recomputed) a load that is a
    # well-formed model of the config it stores (see the harness's docstring for why that is the contract).
    from fuzz_mutants import CATEGORIES, build_originals

    originals = build_originals(tmp_path)
    count = FUZZ_PER_CATEGORY * len(CATEGORIES)
    result = fuzz.run_fuzz(originals, count, seed=0, bomb_bytes=16 << 20, deadline=20.0, workdir=tmp_path)
    assert result["anything_else"] == 0, result["anything_else_examples"]
    assert result["errors_via_fallback"] == 0, result["fallback_examples"]  # each refusal is a check that names why
    assert result["tried"] == count == sum(result[k] for k in fuzz.OUTCOMES)
    assert result["peak_rss_bytes"] <= fuzz.RSS_BOUND_BYTES and result["peak_python_bytes"] <= fuzz.PYTHON_BOUND_BYTES
    assert result["max_seconds"] < 20.0 and result["workers_started"] == 1
    for name, counts in result["by_category"].items():
        assert counts["tried"] == FUZZ_PER_CATEGORY, name
        if not CATEGORIES[name][0]:  # not careful liars: the digests leave no room for other weights
            assert counts["checked_load"] == 0, name
        if name.startswith(("stored_", "bomb_")):
            assert counts["clean_error"] == FUZZ_PER_CATEGORY, (name, counts)
    # The fuzz is not vacuous: most mutants are refused, and some careful liars do load (in-range codes).
    assert result["clean_error"] > count // 2 and result["checked_load"] > 0


def raising(exc: BaseException) -> Callable[[], Any]:
    def make() -> Any:
        raise exc
    return make


def test_fuzz_classifier_finds_what_it_is_meant_to_find(fuzz: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness's classifier against a loader that breaks each rule once: another exception type, a
    # multi-line message, a message not naming the file, other weights from a mutant whose content digest
    # was not recomputed, a NaN weight from a careful liar. Each must land in anything_else, or the fuzz
    # above could pass by not looking.
    from fuzz_mutants import build_originals

    original = build_originals(tmp_path)[0]
    loaded = read_artifact(original)
    first = next(iter(loaded.state))

    def changed(value: torch.Tensor) -> Callable[[], Any]:
        return lambda: dataclasses.replace(loaded, state={**loaded.state, first: value})

    cases: list[tuple[Callable[[], Any], bool, str]] = [
        (raising(IndexError("oops")), False, "IndexError"),
        (raising(UserError(f"artifact {original}:\ntwo lines")), False, "bad error message"),
        (raising(UserError("names no file")), False, "bad error message"),
        (raising(UserError(f"artifact {original}: malformed (MemoryError: )")), False, "bad error message"),
        (raising(UserError(f"artifact {original}: malformed (TypeError: x); re-export it")), False, ""),
        (changed(loaded.state[first] + 1), False, "different weights"),
        (changed(loaded.state[first] + 1), True, ""),  # a careful liar's other, finite weights: checked
        (changed(torch.full_like(loaded.state[first], math.nan)), True, "non-finite"),
        (changed(loaded.state[first].reshape(-1).repeat(2)), True, "shapes"),
        (lambda: loaded, False, ""),
    ]
    for make, liar, detail in cases:
        monkeypatch.setattr(fuzz, "read_artifact", lambda path, make=make: make())
        outcome, why = fuzz.classify(original, loaded, liar)
        assert (outcome == "anything_else") == bool(detail) and detail in why, (detail, outcome, why)


def test_fuzz_counts_hangs_crashes_and_memory(fuzz: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The deadline is real: a worker busy on a bomb past a tiny deadline is reported as not answering (and
    # the runner then counts the mutant in anything_else, restarts the worker and goes on).
    from fuzz_mutants import Bombs, build_originals

    originals = build_originals(tmp_path)
    bomb = tmp_path / "bomb.ptz"
    bombs = Bombs.build(16 << 20)
    bomb.write_bytes(bombs.file("zlib", bombs.size, bombs.zeros_sha256))
    worker = fuzz.Worker(originals)
    try:
        assert worker.ask({"path": str(bomb), "origin": 0, "liar": True}, 0.001) is None
        assert worker.proc.poll() is None  # still working: a mutant past its deadline is a hang, not an answer
    finally:
        worker.close()
    answers = iter([None, {"outcome": "clean_error", "detail": "", "seconds": 0.1, "python_peak": 1, "rss": 2**31},
                    {"outcome": "identical_load", "detail": "", "seconds": 0.1, "python_peak": 2**31, "rss": 1}])

    class Scripted:
        def __init__(self, paths: list[Path]) -> None:
            self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

        def ask(self, task: dict[str, Any], deadline: float) -> dict[str, Any] | None:
            return next(answers)

        def close(self) -> None:
            self.proc.kill()
            self.proc.wait()

    monkeypatch.setattr(fuzz, "Worker", Scripted)
    result = fuzz.run_fuzz(originals, 3, bomb_bytes=1 << 20, workdir=tmp_path)
    assert result["anything_else"] == 3 and result["workers_started"] == 2
    details = [e["detail"] for e in result["anything_else_examples"]]
    assert "hang" in details[0] and "memory" in details[1] and "memory" in details[2]


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
