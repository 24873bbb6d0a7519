"""The submission artifact, loading side: read, check, decompress (bounded) and dequantise.

Layout of one artifact file (all integers little-endian):

    b"PGOLFAR1"                        8-byte magic
    format version                     uint32 (2)
    compressor name                    uint8 length + ASCII name (zlib, zstd, brotli, lzma, none)
    uncompressed payload length        uint64 (checked against a bound before decompressing)
    compressed payload length          uint64
    sha256 of the compressed payload   32 bytes (checked before decompressing)
    sha256 of the uncompressed payload 32 bytes (checked after: what was decoded is what was written)
    compressed payload

The uncompressed payload is a uint32 length, a canonical JSON header (`format`, `meta`, `model_config`,
`run_config`, `tensors`: [name, TensorPlan] in state-dict order, `layout`: the [name, part] order of the
streams), then the byte streams back to back. Each stream's length follows from its plan
(`pgolf.quant.layout`), so nothing in the file says where to read except through the plan, and
nothing is pickled: loading never executes code.

Everything is checked before it is used (issue 10): the file size and the declared uncompressed size
against bounds, decompression streamed with an output cap, the configs read strictly, the stored
names, shapes and dtypes compared with a model built on the meta device (no memory), the parameter
count against the file's size, codes within their bit range, scales finite and positive, floats
finite. Every failure is a one-line UserError naming the file and the field or tensor.

The writing side (quantisers, GPTQ, fitting, the compressors) lives in `pgolf.quant` and does not ship
with the scorer. Counted bytes are the challenge's "code bytes plus compressed model bytes" (decimal):
the file's size plus the code bytes the writer was given.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import brotli
import torch
import zstandard
from torch import Tensor

from pgolf.config import ConfigError, ModelConfig, model_config_from_dict, run_config_from_dict
from pgolf.errors import UserError
from pgolf.flags import section_from_dict
from pgolf.quant.layout import TensorPlan, decode_parts, dequantize, dtype_name, stream_nbytes, stream_specs

MAGIC = b"PGOLFAR1"
FORMAT_VERSION = 2
COMPRESSORS = ("zlib", "zstd", "brotli", "lzma", "none")
LARGEST_BUDGET_BYTES = 16_000_000
DEFAULT_MAX_FILE_BYTES = 4 * LARGEST_BUDGET_BYTES
DEFAULT_MAX_RAW_BYTES = 256 * 2**20
MAX_HEADER_BYTES = 16 * 2**20
PARAMS_PER_FILE_BYTE = 64  # int2 codes with heavy pruning stay far below this; a lie about the model does not
HEADER_KEYS = ("format", "layout", "meta", "model_config", "run_config", "tensors")

_FIXED = struct.Struct("<8sIB")  # magic, format version, compressor name length
_TAIL = struct.Struct("<QQ32s32s")  # uncompressed length, compressed length, sha256 of compressed and of raw
_HEADER_LEN = struct.Struct("<I")

# The loading side: the modules `pgolf eval` needs to read an artifact and score it (a test scores
# with every other pgolf module blocked). The writer side (quantisers, GPTQ, fitting, codecs'
# compress half) stays out of them. The counted code of a run is its single-file bundle (pgolf.bundle).
SCORING_MODULES: tuple[str, ...] = (
    "__init__.py",
    "artifact.py",
    "config/__init__.py",
    "config/checks.py",
    "config/model.py",
    "config/quant.py",
    "flags.py",
    "errors.py",
    "fileio.py",
    "quant/__init__.py",
    "quant/layout.py",
    "model/__init__.py",
    "model/layers.py",
    "model/specs.py",
    "model/documents.py",
    "model/embeddings.py",
    "model/attention.py",
    "model/mlp.py",
    "model/gpt.py",
    "model/roles.py",
    "tokenizer.py",
    "eval/__init__.py",
    "eval/bpb.py",
    "eval/sliding.py",
    "data/__init__.py",
    "data/shards.py",
    "scoring.py",
    "dist.py",
)


# ---------------------------------------------------------------- results

@dataclass
class ArtifactInfo:
    """What an artifact costs: `model_bytes` is the whole file, `total_bytes` adds the counted code."""

    path: Path
    model_bytes: int
    code_bytes: int
    total_bytes: int
    sha256: str


@dataclass
class LoadedArtifact:
    """An artifact read back: dequantised weights, the stored configs, plans and metadata, and its cost."""

    state: dict[str, Tensor]
    model_config: dict[str, Any]
    run_config: dict[str, Any]
    meta: dict[str, Any]
    info: ArtifactInfo
    plans: dict[str, TensorPlan]


def check_budget(info: ArtifactInfo, max_bytes: int) -> None:
    """UserError when code + model bytes exceed the budget."""
    over = info.total_bytes - max_bytes
    if over > 0:
        raise UserError(f"artifact {info.path} is {info.total_bytes:,} bytes (code {info.code_bytes:,} + model "
                        f"{info.model_bytes:,}), over the {max_bytes:,} byte budget by {over:,}; "
                        f"shrink the model or raise --budget.artifact_max_bytes")


# ---------------------------------------------------------------- file header

class ArtifactError(UserError):
    """One way an artifact file is wrong; the message names the file and the field or tensor."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"artifact {path}: {what}; re-export it")


def _not_an_artifact(path: Path, head: bytes) -> UserError:
    looks = " (it looks like a torch.save/pickle file)" if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" else ""
    return UserError(f"{path} is not a pgolf artifact (bad magic){looks}; it may be a torch.save .pt/.ptz file, "
                     f"which pgolf never unpickles; export one with `pgolf train` or `pgolf run`")


@dataclass
class FileHeader:
    compressor: str
    raw_len: int
    raw_sha256: bytes
    payload: bytes


def unpack_header(path: Path, blob: bytes, max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES) -> FileHeader:
    """Check magic, version, compressor, declared size and checksum; return the compressed payload."""
    if blob[:len(MAGIC)] != MAGIC:
        raise _not_an_artifact(path, blob[:8])
    truncated = UserError(f"artifact {path} is truncated ({len(blob)} bytes, header incomplete); re-export it")
    if len(blob) < _FIXED.size:
        raise truncated
    _, version, name_len = _FIXED.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise UserError(f"artifact {path} has format version {version}, this pgolf reads version {FORMAT_VERSION}; "
                        f"re-export it with this pgolf or use the pgolf that wrote it")
    start = _FIXED.size + name_len
    if len(blob) < start + _TAIL.size:
        raise truncated
    name = blob[_FIXED.size:start].decode("ascii", errors="replace")
    if name not in COMPRESSORS:
        raise UserError(f"artifact {path} uses unknown compressor {name!r} (known: {', '.join(COMPRESSORS)}); "
                        f"re-export it")
    raw_len, length, digest, raw_digest = _TAIL.unpack_from(blob, start)
    payload = blob[start + _TAIL.size:]
    if len(payload) != length or hashlib.sha256(payload).digest() != digest:
        raise UserError(f"artifact {path} fails its checksum (corrupt or truncated: {len(payload)} of {length} "
                        f"payload bytes, sha256 mismatch); re-export it")
    if raw_len > max_raw_bytes:
        raise ArtifactError(path, f"declared uncompressed size {raw_len:,} exceeds the bound of {max_raw_bytes:,} bytes")
    return FileHeader(compressor=name, raw_len=raw_len, raw_sha256=raw_digest, payload=payload)


def pack_header(compressor: str, raw: bytes, payload: bytes, raw_len: int | None = None) -> bytes:
    """The fixed header that precedes `payload`, the compressed form of `raw` (`raw_len` overrides the
    declared length, for tests of lying files)."""
    name = compressor.encode("ascii")
    declared = len(raw) if raw_len is None else raw_len
    return (_FIXED.pack(MAGIC, FORMAT_VERSION, len(name)) + name
            + _TAIL.pack(declared, len(payload), hashlib.sha256(payload).digest(), hashlib.sha256(raw).digest()))


# ---------------------------------------------------------------- bounded decompression

def _brotli_bounded(data: bytes, cap: int) -> bytes:
    d = brotli.Decompressor()
    try:
        out = d.process(data, output_buffer_limit=cap)
    except TypeError:  # brotli < 1.2 has no output limit: feed one byte at a time and stop at the cap
        parts, size = [], 0
        for i in range(len(data)):
            parts.append(d.process(data[i:i + 1]))
            size += len(parts[-1])
            if size >= cap:
                break
        out = b"".join(parts)
    if len(out) < cap and not d.is_finished():
        raise ValueError("the brotli stream ends early")
    return out[:cap]  # the limit stops the buffer growing, a little past the cap at most


def decompress_bounded(data: bytes, name: str, limit: int) -> bytes:
    """Decompress at most `limit + 1` bytes, streaming, so a stream that expands past `limit` is caught
    without ever holding more; the codec's own errors propagate."""
    cap = limit + 1
    if name == "none":
        return bytes(data[:cap])
    if name == "zlib":
        dz = zlib.decompressobj()
        out = dz.decompress(data, cap)
        if len(out) < cap and not dz.eof:
            raise ValueError("the zlib stream ends early")
        return out
    if name == "lzma":
        dl = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out = dl.decompress(data, max_length=cap)
        if len(out) < cap and not dl.eof:
            raise ValueError("the xz stream ends early")
        return out
    if name == "zstd":
        chunks, size = [], 0
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            while size < cap and (chunk := reader.read(min(cap - size, 1 << 20))):
                chunks.append(chunk)
                size += len(chunk)
        return b"".join(chunks)
    if name == "brotli":
        return _brotli_bounded(data, cap)
    raise ValueError(f"unknown compressor {name!r}")


def read_payload(path: Path, header: FileHeader) -> bytes:
    """The uncompressed payload, exactly as long as declared."""
    try:
        raw = decompress_bounded(header.payload, header.compressor, header.raw_len)
    except Exception as exc:  # zlib.error, lzma.LZMAError, brotli.error, zstandard.ZstdError, ValueError
        raise UserError(f"artifact {path} does not decompress with {header.compressor} ({exc}); re-export it") from None
    if len(raw) > header.raw_len:
        raise ArtifactError(path, f"actual uncompressed size exceeds the bound of {header.raw_len:,} bytes it declares")
    if len(raw) < header.raw_len:
        raise ArtifactError(path, f"uncompressed size {len(raw):,} is short of the {header.raw_len:,} bytes it declares")
    if hashlib.sha256(raw).digest() != header.raw_sha256:
        raise ArtifactError(path, "the uncompressed payload fails its sha256 (the content changed after writing)")
    return raw


# ---------------------------------------------------------------- payload structure

def parse_payload(path: Path, raw: bytes) -> tuple[dict[str, Any], memoryview]:
    """(JSON header, data section) of an uncompressed payload."""
    if len(raw) < _HEADER_LEN.size:
        raise ArtifactError(path, "payload is shorter than its header length")
    (header_len,) = _HEADER_LEN.unpack_from(raw)
    if header_len > min(len(raw) - _HEADER_LEN.size, MAX_HEADER_BYTES):
        raise ArtifactError(path, f"header length {header_len:,} exceeds the payload or the bound of {MAX_HEADER_BYTES:,}")
    end = _HEADER_LEN.size + header_len
    try:
        header = json.loads(bytes(raw[_HEADER_LEN.size:end]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(path, f"header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict) or sorted(header) != sorted(HEADER_KEYS):
        raise ArtifactError(path, f"header must hold exactly the keys {', '.join(HEADER_KEYS)}")
    if header["format"] != FORMAT_VERSION:
        raise ArtifactError(path, f"header format {header['format']!r:.40} is not {FORMAT_VERSION}")
    return header, memoryview(raw)[end:]


def read_meta(path: Path, meta: Any) -> dict[str, Any]:
    """The writer's metadata: a JSON object whose `code_bytes` is a count of bytes."""
    if not isinstance(meta, dict):
        raise ArtifactError(path, "meta is not an object")
    code_bytes = meta.get("code_bytes")
    if not isinstance(code_bytes, int) or isinstance(code_bytes, bool) or code_bytes < 0:
        raise ArtifactError(path, f"meta.code_bytes={code_bytes!r:.40} is not a byte count")
    return meta


def _stored_config(path: Path, key: str, read: Any, data: Any) -> Any:
    try:
        return read(data)
    except ConfigError as exc:
        text = str(exc)
        raise ArtifactError(path, text if text.startswith(key) else f"stored {key}: {text}") from None


def read_configs(path: Path, header: dict[str, Any]) -> ModelConfig:
    """Type-check the stored model and run configs field by field (they must agree on the model)."""
    model_cfg = _stored_config(path, "model_config", model_config_from_dict, header["model_config"])
    run_cfg = _stored_config(path, "run_config", run_config_from_dict, header["run_config"])
    if run_cfg.model != model_cfg:
        raise ArtifactError(path, "run_config.model differs from model_config")
    return model_cfg


def read_plans(path: Path, entries: Any) -> dict[str, TensorPlan]:
    """Name -> TensorPlan, each read strictly (every field present and typed) and checked for consistency."""
    if not isinstance(entries, list):
        raise ArtifactError(path, "tensors is not a list")
    plans: dict[str, TensorPlan] = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ArtifactError(path, f"tensors[{i}] is not a [name, plan] pair")
        name, data = entry
        if name in plans:
            raise ArtifactError(path, f"tensor {name!r:.80} is stored twice")
        try:
            plan = section_from_dict(TensorPlan, data, f"plan of tensor {name!r:.80}")
            plan.validate()
        except (ConfigError, ValueError, TypeError) as exc:
            raise ArtifactError(path, f"tensor {name!r:.80}: {exc}") from None
        plans[name] = plan
    return plans


def expected_state(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of the state dict of `GPT(cfg)`, built on the meta device (no memory)."""
    return dict(_expected_state(json.dumps(dataclasses.asdict(cfg), sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _expected_state(cfg_json: str) -> tuple[tuple[str, tuple[tuple[int, ...], str]], ...]:
    from pgolf.model.gpt import GPT

    with torch.device("meta"):
        model = GPT(ModelConfig(**json.loads(cfg_json)))
    return tuple((k, (tuple(v.shape), dtype_name(v.dtype))) for k, v in model.state_dict().items())


def estimated_params(cfg: ModelConfig) -> int:
    """Parameters of `GPT(cfg)` extrapolated from its 1- and 2-layer versions (cheap, even for 1024 layers).

    Features that name layers by index (value embeddings, loops, parallel residuals) are dropped from the
    small versions, which could not hold those indices; what they add per layer is small, so this stays a
    fair pre-filter (the exact comparison with the full model follows)."""
    flat = replace(cfg, value_embed_layers=(), num_loops=0, loop_start=0, loop_end=0, loop_enable_frac=0.0,
                   parallel_residual="off", parallel_from=0)
    one, two = (sum(math.prod(shape) for shape, _ in expected_state(replace(flat, num_layers=n)).values())
                for n in (1, 2))
    return one + (cfg.num_layers - 1) * max(two - one, 0)


def check_against_model(path: Path, plans: dict[str, TensorPlan], cfg: ModelConfig, file_bytes: int) -> None:
    """The stored tensors are exactly the model's (names, shapes, dtypes), and neither they nor the model are
    absurdly large for the file (checked before the whole model is built, even on the meta device)."""
    bound = PARAMS_PER_FILE_BYTE * file_bytes
    num_params = sum(p.numel for p in plans.values())
    if num_params > bound:
        raise ArtifactError(path, f"{num_params:,} stored parameters exceed the bound of {PARAMS_PER_FILE_BYTE} "
                                  f"per file byte ({file_bytes:,} bytes)")
    implied = estimated_params(cfg)
    if implied > 2 * bound:  # a pre-filter with slack: the exact comparison follows
        raise ArtifactError(path, f"model_config implies about {implied:,} parameters, over the bound of "
                                  f"{PARAMS_PER_FILE_BYTE} per file byte ({file_bytes:,} bytes)")
    expected = expected_state(cfg)
    missing = [n for n in expected if n not in plans]
    extra = [n for n in plans if n not in expected]
    if missing or extra:
        what = f"lacks tensor {missing[0]!r}" if missing else f"has tensor {extra[0]!r:.80} that the model has not"
        raise ArtifactError(path, f"{what} (model_config and stored tensors disagree)")
    for name, (shape, dtype) in expected.items():
        plan = plans[name]
        if plan.shape != shape or plan.dtype != dtype:
            raise ArtifactError(path, f"tensor {name!r} is {plan.dtype}{list(plan.shape)}, the model's is "
                                      f"{dtype}{list(shape)}")


def split_streams(path: Path, plans: dict[str, TensorPlan], layout: Any, data: memoryview) -> dict[str, dict[str, bytes]]:
    """Name -> part -> bytes; the layout must list every stream once and the lengths must tile the data."""
    wanted = {(n, part) for n, p in plans.items() for part in stream_specs(p)}
    if not isinstance(layout, list) or not all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
                                               for e in layout):
        raise ArtifactError(path, "layout is not a list of [tensor, part] pairs")
    order = [tuple(e) for e in layout]
    if len(order) != len(wanted) or set(order) != wanted:
        raise ArtifactError(path, "layout does not list each stream of each tensor exactly once")
    streams: dict[str, dict[str, bytes]] = {n: {} for n in plans}
    offset = 0
    for name, part in order:
        n = stream_nbytes(plans[name], part)
        if offset + n > len(data):
            raise ArtifactError(path, f"tensor {name!r} stream {part} runs past the end of the payload")
        streams[name][part] = bytes(data[offset:offset + n])
        offset += n
    if offset != len(data):
        raise ArtifactError(path, f"payload holds {len(data) - offset:,} bytes after the last stream")
    return streams


def restore_state(path: Path, plans: dict[str, TensorPlan], streams: dict[str, dict[str, bytes]]) -> dict[str, Tensor]:
    """Decode and dequantise every tensor; a value that is not what its kind says names the tensor."""
    state = {}
    for name, plan in plans.items():
        try:
            parts = decode_parts(plan, streams[name])
        except ValueError as exc:
            raise ArtifactError(path, f"tensor {name!r}: {exc}") from None
        out = dequantize(plan, parts)
        if out.is_floating_point() and not bool(torch.isfinite(out).all()):
            raise ArtifactError(path, f"tensor {name!r} dequantises to non-finite values")
        state[name] = out
    return state


# ---------------------------------------------------------------- read

def read_blob(path: Path, max_file_bytes: int) -> bytes:
    """The file's bytes, refusing a missing file or one over the bound before reading it."""
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist; check the path or export one with `pgolf run`")
    size = path.stat().st_size
    if size > max_file_bytes:
        raise ArtifactError(path, f"file size {size:,} exceeds the bound of {max_file_bytes:,} bytes")
    with path.open("rb") as f:
        blob = f.read(size + 1)  # one byte more than stat said, to notice a file that grew since
        if len(blob) > size:
            blob += f.read(max_file_bytes + 1 - len(blob))
    if len(blob) > max_file_bytes:
        raise ArtifactError(path, f"actual file size exceeds the bound of {max_file_bytes:,} bytes")
    return blob


def _decode(path: Path, blob: bytes, max_raw_bytes: int) -> tuple[dict[str, Any], dict[str, TensorPlan],
                                                                   dict[str, Tensor]]:
    header = unpack_header(path, blob, max_raw_bytes)
    payload, data = parse_payload(path, read_payload(path, header))
    payload["meta"] = read_meta(path, payload["meta"])
    model_cfg = read_configs(path, payload)
    plans = read_plans(path, payload["tensors"])
    check_against_model(path, plans, model_cfg, len(blob))
    streams = split_streams(path, plans, payload["layout"], data)
    payload["meta"]["compressor"] = header.compressor
    return payload, plans, restore_state(path, plans, streams)


def read_artifact(path: str | Path, *, code_bytes: int | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                  max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES) -> LoadedArtifact:
    """Read, verify and dequantise an artifact; every way it can be wrong is a one-line UserError.

    `code_bytes` is the counted code to add to the file's size; by default the figure recorded when the
    artifact was written. `max_file_bytes` and `max_raw_bytes` bound the file and its uncompressed payload."""
    path = Path(path)
    blob = read_blob(path, max_file_bytes)
    try:
        payload, plans, state = _decode(path, blob, max_raw_bytes)
    except UserError:
        raise
    except Exception as exc:  # a check this module forgot must still end as one line, not a traceback
        raise ArtifactError(path, f"malformed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    sha = hashlib.sha256(blob).hexdigest()
    meta = payload["meta"]
    code = meta["code_bytes"] if code_bytes is None else code_bytes
    info = ArtifactInfo(path=path, model_bytes=len(blob), code_bytes=code, total_bytes=len(blob) + code, sha256=sha)
    return LoadedArtifact(state=state, model_config=payload["model_config"], run_config=payload["run_config"],
                          meta={**meta, "file_sha256": sha}, info=info, plans=plans)


def payload_bytes(header: dict[str, Any], streams: list[bytes]) -> bytes:
    """An uncompressed payload: the canonical JSON header, then the streams (the writer's counterpart
    of `parse_payload`, kept here so both ends agree on the framing)."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return _HEADER_LEN.pack(len(text)) + text + b"".join(streams)

