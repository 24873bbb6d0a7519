"""Mutants of real tiny artifacts for the loader fuzz (`fuzz_artifact.py`, issue 10): the originals, one
maker per category, and decompression bombs. A mutant is a pure function of (seed, index), so any finding
can be rebuilt from its index alone.

Categories, named by what the attacker recomputed after the change: `stored_*` (nothing: the file as
stored), `outer_*` (the outer sha256 of the compressed payload only), `liar_*` (both digests: a careful
liar), `bomb_*` (streams that expand far beyond what they declare, or declare more than the bound).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgolf import artifact
from pgolf.artifact import pack_header
from pgolf.config import BudgetConfig, DataConfig, ModelConfig, QuantConfig, RunConfig, TrainConfig, config_to_dict
from pgolf.quant import pack
from pgolf.quant.layout import TensorPlan, itemsize, stream_nbytes, stream_specs

Header = dict[str, Any]
CODECS = ("zlib", "zstd", "brotli", "lzma")
LEVELS = {"zlib": 6, "zstd": 3, "brotli": 5, "lzma": 1, "none": 0}


# ---------------------------------------------------------------- originals

def _run_config(**quant: Any) -> RunConfig:
    """A 2x32 model at vocab 64 whose tensors take every stream kind the quant settings give."""
    return RunConfig(
        name="fuzz",
        model=ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0),
        train=TrainConfig(train_batch_tokens=256, train_seq_len=16, grad_accum_steps=1),
        data=DataConfig(source="fineweb"), quant=QuantConfig(**quant),
        budget=BudgetConfig(artifact_max_bytes=10_000_000),
    ).validate()


# Plain: int8-stored 6-bit codes, fp16 row scales, fp32 floats. Rich: bit-packed, transposed and
# byte-shuffled streams, group scales, fp16 floats and an LQER correction.
ORIGINAL_QUANT: tuple[dict[str, Any], ...] = (
    dict(scheme="intx", keep_float_max_numel=256, matrix_bits=6, compressor="none"),
    dict(scheme="intx", keep_float_max_numel=256, matrix_bits=5, compressor="none", packing="bitpack",
         byte_shuffle=True, transpose_codes=True, group_size=16, lqer_rank=2, lqer_top_k=2, lqer_group_size=16,
         control_dtype="float16"),
)


def build_originals(folder: Path) -> list[Path]:
    """Real artifacts of small models with trained-like weights, written by the project's export."""
    from pgolf.model.gpt import GPT
    from pgolf.model.roles import param_roles
    from pgolf.quant.export import write_artifact

    paths = []
    for i, quant in enumerate(ORIGINAL_QUANT):
        cfg = _run_config(**quant)
        torch.manual_seed(i)
        model = GPT(cfg.model)
        roles = param_roles(model)
        with torch.no_grad():  # no zero-initialised projections: every stream holds varied values
            for name, p in model.named_parameters():
                p.add_(torch.randn(p.shape) * (0.02 if roles[name] == "embedding" else 0.08 if roles[name] == "matrix"
                                               else 0.3))
        path = folder / f"original{i}.ptz"
        write_artifact(path, model, roles=roles, quant=cfg.quant, model_config=config_to_dict(cfg.model),
                       run_config=config_to_dict(cfg), code_bytes=12_345, budget_bytes=cfg.budget.artifact_max_bytes)
        paths.append(path)
    return paths


@dataclass
class Original:
    """One original artifact: its uncompressed payload, parsed, and the file in every compressor."""

    raw: bytes
    header: Header
    data: bytes
    files: dict[str, bytes]
    payloads: dict[str, bytes]

    @classmethod
    def read(cls, path: Path) -> Original:
        blob = path.read_bytes()
        raw = artifact.read_payload(path, artifact.unpack_header(path, blob))
        header, data = artifact.parse_payload(path, raw)
        payloads = {c: pack.compress(raw, c, LEVELS[c]) for c in (*CODECS, "none")}
        files = {c: pack_header(c, raw, p) + p for c, p in payloads.items()}
        return cls(raw=bytes(raw), header=header, data=bytes(data), files=files, payloads=payloads)

    def plans(self) -> dict[str, TensorPlan]:
        return {n: TensorPlan(**{**p, "shape": tuple(p["shape"]), "clip_values": tuple(p["clip_values"])})
                for n, p in self.header["tensors"]}


def raw_from(header: Header, data: bytes) -> bytes:
    """An uncompressed payload from a (possibly lying) header; NaN and inf are written as JSON allows them."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack("<I", len(text)) + text + data


# ---------------------------------------------------------------- mutants

@dataclass(frozen=True)
class Mutant:
    category: str
    blob: bytes
    origin: int  # which original it came from
    liar: bool  # both digests recomputed: a checked load of other weights is allowed


def flip_bits(buf: bytes, rng: random.Random, lo: int = 0) -> bytes:
    out = bytearray(buf)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(lo, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def cut_or_extend(buf: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return buf[:rng.randrange(len(buf))]
    tail = rng.randbytes(rng.randint(1, 64)) if rng.random() < 0.5 else bytes(rng.randint(1, 64))
    return buf + tail


def as_liar(raw: bytes, rng: random.Random) -> bytes:
    """The payload written as a file with both digests recomputed, in a random compressor."""
    codec = rng.choice((*CODECS, "none", "none"))
    payload = pack.compress(raw, codec, LEVELS[codec])
    return pack_header(codec, raw, payload) + payload


def outer_only(raw: bytes, original_raw: bytes, rng: random.Random) -> bytes:
    """The payload written with its outer checksum recomputed and the original's content digest."""
    codec = rng.choice((*CODECS, "none"))
    payload = pack.compress(raw, codec, LEVELS[codec])
    header = pack_header(codec, raw, payload)
    return header[:-32] + hashlib.sha256(original_raw).digest() + payload


LEAF_VALUES: list[Any] = [None, True, False, -1, 0, 1, 3, 2**31, 2**40, 2**63, 1e308, -0.5, math.nan, math.inf, "x",
                          "", "float16", "abc", [], {}, [1, 2], [-1], {"a": 1}]


def mutate_json(header: Header, rng: random.Random) -> None:
    """Replace one randomly chosen leaf (or subtree) of the header with a value of another type or range."""
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
        if isinstance(node, dict) and rng.random() < 0.1:
            del node[key]  # a missing field
        else:
            node[key] = rng.choice(LEAF_VALUES)
        return


DTYPE_LIES = ["float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
              "complex64", "float8_e4m3fn", "", 3, None]


def lie_dtype(h: Header, rng: random.Random) -> None:
    _, plan = rng.choice(h["tensors"])
    plan[rng.choice(("dtype", "store_dtype", "scale_dtype"))] = rng.choice(DTYPE_LIES)


def lie_shape(h: Header, rng: random.Random) -> None:
    _, plan = rng.choice(h["tensors"])
    shape = list(plan["shape"])
    choices = [shape[::-1], shape + [1], shape[:-1], [d * 2 for d in shape], [d + 1 for d in shape], [0] * len(shape),
               [-1] + shape[1:], [2**31] + shape[1:], [2**40, 2**40], [math.prod(shape)], [1] * 9, "abc", [1.5], None]
    plan["shape"] = rng.choice(choices)


PLAN_LIES: dict[str, list[Any]] = {
    "kind": ["intx_row", "intx_tensor", "float", "passthrough", "int4", 0],
    "bits": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, -1, "6", 6.0],
    "packing": ["int8", "bitpack", "nibble", None],
    "group_size": [0, 1, 5, 8, 16, 32, 64, -16, 2**31],
    "transpose": [True, False, 1, "yes"],
    "byte_shuffle": [True, False, 0],
    "lqer_rank": [0, 1, 2, 4, 64, -1, 2**31],
    "lqer_a_bits": [1, 2, 4, 8, 9],
    "lqer_b_bits": [1, 2, 4, 8, 9],
    "lqer_group_size": [0, 1, 16, 17, 64],
    "scale_floor": [0.0, 1e-3, -1.0, math.nan, math.inf, 1e30],
    "clip_values": [[], [1.0], [math.nan], "x"],
    "role": ["matrix", "", 7],
}


def lie_plan(h: Header, rng: random.Random) -> None:
    _, plan = rng.choice(h["tensors"])
    field = rng.choice(list(PLAN_LIES))
    plan[field] = rng.choice(PLAN_LIES[field])


CONFIG_LIES: list[Any] = ["abc", None, True, -1, 0, 1, 2, 3, 9, 64, 1000, 10_000, 16_384, 2**31, 2**63, 0.5, 1e308,
                          math.nan, math.inf, [], {}, "float16"]


def lie_config(h: Header, rng: random.Random) -> None:
    """A model-config field changed the same way in both stored configs (or, sometimes, in one only)."""
    field = rng.choice(sorted(h["model_config"]))
    value = rng.choice(CONFIG_LIES + [h["model_config"][field]] * 2)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and rng.random() < 0.3:
        value = value * 2 if rng.random() < 0.5 else value + 1
    targets = [h["model_config"], h["run_config"]["model"]]
    for t in targets if rng.random() < 0.85 else targets[:1]:
        t[field] = value


SPECIAL_BYTES: dict[int, list[bytes]] = {
    1: [b"\x80", b"\x7f", b"\x20", b"\xe0", b"\x1f", b"\xff", b"\x00"],
    2: [struct.pack("<e", v) for v in (math.nan, math.inf, -math.inf, 0.0, -0.0, -0.5, 65504.0, 6e-8, 1.0)]
       + [b"\xc0\x7f", b"\x80\x7f", b"\x80\xff"],  # bfloat16 NaN, inf, -inf
    4: [struct.pack("<f", v) for v in (math.nan, math.inf, -math.inf, 0.0, -1.0, 3.4e38, 1e-45, 1.0)],
    8: [struct.pack("<d", v) for v in (math.nan, math.inf, 1e308, -1.0)],
}


def lie_values(orig: Original, rng: random.Random) -> bytes:
    """A special value (NaN, inf, zero, negative, huge, out-of-range code) written into one stream element."""
    plans = orig.plans()
    name, part = rng.choice(orig.header["layout"])
    offset = 0
    for n, pt in orig.header["layout"]:
        if (n, pt) == (name, part):
            break
        offset += stream_nbytes(plans[n], pt)
    size = stream_nbytes(plans[name], part)
    encoding = stream_specs(plans[name])[part][0]
    width = 1 if encoding.startswith("codes") else itemsize(encoding)
    data = bytearray(orig.data)
    if size == 0:
        return raw_from(orig.header, bytes(data))
    for _ in range(rng.randint(1, 3)):
        at = offset + rng.randrange(size // width) * width
        data[at:at + width] = rng.choice(SPECIAL_BYTES[width]) if rng.random() < 0.8 else rng.randbytes(width)
    return raw_from(orig.header, bytes(data))


def header_lie(edit: Callable[[Header, random.Random], None]) -> Callable[[Original, random.Random], bytes]:
    def make(orig: Original, rng: random.Random) -> bytes:
        h = json.loads(json.dumps(orig.header))
        edit(h, rng)
        return raw_from(h, orig.data)
    return make


def raw_flip(orig: Original, rng: random.Random) -> bytes:
    # Half of the flips land in the tensor data, where the header's checks cannot see them.
    lo = len(orig.raw) - len(orig.data) if rng.random() < 0.5 and orig.data else 0
    return flip_bits(orig.raw, rng, lo)


@dataclass
class Bombs:
    """Streams of `size` zero bytes in every codec, and the digests of their exact content."""

    size: int
    streams: dict[str, bytes]
    zeros_sha256: bytes

    @classmethod
    def build(cls, size: int) -> Bombs:
        chunk = bytes(min(size, 16 << 20))
        n, rest = divmod(size, len(chunk))
        streams = {}
        z = zlib.compressobj(9)
        streams["zlib"] = b"".join(z.compress(chunk) for _ in range(n)) + z.compress(chunk[:rest]) + z.flush()
        import brotli
        import zstandard

        zc = zstandard.ZstdCompressor(level=1).compressobj()
        streams["zstd"] = b"".join(zc.compress(chunk) for _ in range(n)) + zc.compress(chunk[:rest]) + zc.flush()
        b = brotli.Compressor(quality=1)
        streams["brotli"] = b"".join(b.process(chunk) for _ in range(n)) + b.process(chunk[:rest]) + b.finish()
        import lzma

        lz = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=0)
        streams["lzma"] = b"".join(lz.compress(chunk) for _ in range(n)) + lz.compress(chunk[:rest]) + lz.flush()
        digest = hashlib.sha256()
        for _ in range(n):
            digest.update(chunk)
        digest.update(chunk[:rest])
        return cls(size=size, streams=streams, zeros_sha256=digest.digest())

    def file(self, codec: str, declared: int, raw_digest: bytes = b"\0" * 32) -> bytes:
        stream = self.streams[codec]
        head = pack_header(codec, b"", stream, raw_len=declared)
        return head[:-32] + raw_digest + stream


def bomb_declared(bombs: Bombs, rng: random.Random) -> bytes:
    bound = artifact.DEFAULT_MAX_RAW_BYTES
    declared = rng.choice([bound + 1, 2 * bound, bombs.size if bombs.size > bound else 2**40, 2**40, 2**64 - 1])
    return bombs.file(rng.choice(CODECS), declared)


def bomb_lying(bombs: Bombs, rng: random.Random) -> bytes:
    # Log-uniform declared sizes below the real expansion: most small, a few near the bomb's size.
    declared = min(int(2 ** rng.uniform(0, math.log2(bombs.size))), bombs.size - 1)
    return bombs.file(rng.choice(CODECS), declared)


def bomb_exact(bombs: Bombs, rng: random.Random) -> bytes:
    """A careful liar's bomb: every digest right, its exact size declared, within the bound when bombs are."""
    return bombs.file(rng.choice(CODECS), bombs.size, bombs.zeros_sha256)


Maker = Callable[["Context", Original, random.Random], bytes]


@dataclass
class Context:
    originals: list[Original]
    bombs: Bombs


CATEGORIES: dict[str, tuple[bool, Maker]] = {
    # name: (careful liar?, maker)
    "stored_bitflip": (False, lambda c, o, r: flip_bits(o.files[r.choice(list(o.files))], r)),
    "stored_truncate": (False, lambda c, o, r: (f := o.files[r.choice(list(o.files))])[:r.randrange(len(f))]),
    "stored_extend": (False, lambda c, o, r: o.files[r.choice(list(o.files))] + r.randbytes(r.randint(1, 64))),
    "outer_codec_flip": (False, lambda c, o, r: codec_flip(o, r)),
    "outer_payload_flip": (False, lambda c, o, r: outer_only(raw_flip(o, r), o.raw, r)),
    "outer_payload_cut": (False, lambda c, o, r: outer_only(cut_or_extend(o.raw, r), o.raw, r)),
    "liar_bitflip": (True, lambda c, o, r: as_liar(raw_flip(o, r), r)),
    "liar_cut": (True, lambda c, o, r: as_liar(cut_or_extend(o.raw, r), r)),
    "liar_metadata": (True, lambda c, o, r: as_liar(header_lie(mutate_json)(o, r), r)),
    "liar_dtype": (True, lambda c, o, r: as_liar(header_lie(lie_dtype)(o, r), r)),
    "liar_shape": (True, lambda c, o, r: as_liar(header_lie(lie_shape)(o, r), r)),
    "liar_plan": (True, lambda c, o, r: as_liar(header_lie(lie_plan)(o, r), r)),
    "liar_config": (True, lambda c, o, r: as_liar(header_lie(lie_config)(o, r), r)),
    "liar_values": (True, lambda c, o, r: as_liar(lie_values(o, r), r)),
    "bomb_declared": (False, lambda c, o, r: bomb_declared(c.bombs, r)),
    "bomb_lying": (False, lambda c, o, r: bomb_lying(c.bombs, r)),
    "bomb_exact": (True, lambda c, o, r: bomb_exact(c.bombs, r)),
}


def codec_flip(orig: Original, rng: random.Random) -> bytes:
    """Bits flipped inside a compressed payload; only the outer checksum is recomputed."""
    codec = rng.choice(CODECS)
    payload = flip_bits(orig.payloads[codec], rng)
    return pack_header(codec, orig.raw, payload) + payload


def make_mutant(ctx: Context, seed: int, index: int) -> Mutant:
    """Mutant `index` of a run: categories in turn, each drawn from its own seeded generator."""
    names = list(CATEGORIES)
    category = names[index % len(names)]
    rng = random.Random(seed * 1_000_003 + index)
    origin = rng.randrange(len(ctx.originals))
    liar, maker = CATEGORIES[category]
    return Mutant(category=category, blob=maker(ctx, ctx.originals[origin], rng), origin=origin, liar=liar)
