"""The submission artifact: a safe container for the quantised model, its codecs and its byte count.

Layout of one artifact file (all integers little-endian):

    b"PGOLFAR1"                      8-byte magic
    format version                   uint32
    compressor name                  uint8 length + ASCII name
    payload length                   uint64
    sha256 of the payload            32 bytes (checked before decompressing)
    payload                          compress(safetensors bytes)

The safetensors blob holds the quantised tensors; its string metadata holds JSON: `pgolf_meta`
(format, quantisation metadata per tensor, code bytes and counted files at write time, pgolf version,
extra), `model_config` and `run_config`. Nothing is pickled, so loading never executes code (the
baseline's `torch.save` + zlib `.ptz` does unpickle).

Counted bytes are the challenge's "code bytes plus compressed model bytes" (decimal): the size of this
file plus the UTF-8 size of the source files in COUNTED_MODULES, those needed to load and score it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
from safetensors.torch import load as safetensors_from_bytes
from safetensors.torch import save as safetensors_to_bytes
import zstandard
from torch import Tensor

import pgolf
from pgolf.config import ConfigError, QuantConfig
from pgolf.errors import UserError
from pgolf.fileio import write_bytes_atomic
from pgolf.quant.int8 import dequantize_state_dict_int8, quantize_state_dict_int8

MAGIC = b"PGOLFAR1"
FORMAT_VERSION = 1
COMPRESSORS = ("zlib", "zstd", "brotli", "lzma", "none")
LEVEL_RANGES = {"zlib": (0, 9), "zstd": (1, 22), "brotli": (0, 11), "lzma": (0, 9)}  # "none" ignores the level

# Source files (relative to the package folder) needed to load an artifact and score it.
COUNTED_MODULES: tuple[str, ...] = (
    "__init__.py",
    "artifact.py",
    "config.py",
    "flags.py",
    "errors.py",
    "fileio.py",
    "quant/__init__.py",
    "quant/int8.py",
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

_FIXED = struct.Struct("<8sIB")  # magic, format version, compressor name length
_TAIL = struct.Struct("<Q32s")  # payload length, sha256 of payload


# ---------------------------------------------------------------- codecs

def compress(data: bytes, name: str, level: int) -> bytes:
    """Compress with one of COMPRESSORS; a bad name or level is a ConfigError naming the flag."""
    if name not in COMPRESSORS:
        raise ConfigError(f"quant.compressor={name!r} is not one of {', '.join(COMPRESSORS)}")
    lo, hi = LEVEL_RANGES.get(name, (level, level))
    if not lo <= level <= hi:
        raise ConfigError(f"quant.level={level} is out of range for quant.compressor={name} ({lo}-{hi})")
    if name == "zlib":
        return zlib.compress(data, level)
    if name == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    if name == "brotli":
        return brotli.compress(data, quality=level)
    if name == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=level)
    return bytes(data)


def decompress(data: bytes, name: str) -> bytes:
    """Inverse of `compress`; ValueError on an unknown name, the codec's own error on bad data."""
    if name == "zlib":
        return zlib.decompress(data)
    if name == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    if name == "brotli":
        return brotli.decompress(data)
    if name == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    if name == "none":
        return bytes(data)
    raise ValueError(f"unknown compressor {name!r}")


# ---------------------------------------------------------------- counted code

def package_dir() -> Path:
    """The folder of the pgolf package actually imported (the source tree under an editable install)."""
    return Path(pgolf.__file__).resolve().parent


def missing_counted_modules() -> list[str]:
    """COUNTED_MODULES entries that do not exist in the package folder (should be none)."""
    root = package_dir()
    return [rel for rel in COUNTED_MODULES if not (root / rel).is_file()]


def counted_code_files() -> dict[str, int]:
    """Relative path -> size in bytes of every counted source file (UTF-8 as stored on disk)."""
    missing = missing_counted_modules()
    assert not missing, f"counted source files missing from {package_dir()}: {', '.join(missing)}"
    root = package_dir()
    return {rel: (root / rel).stat().st_size for rel in COUNTED_MODULES}


def count_code_bytes() -> int:
    """Total counted code bytes (uncompressed, decimal), as the baseline counts its script."""
    return sum(counted_code_files().values())


# ---------------------------------------------------------------- write

@dataclass
class ArtifactInfo:
    """What an artifact costs: `model_bytes` is the whole file, `total_bytes` adds the counted code."""

    path: Path
    model_bytes: int
    code_bytes: int
    total_bytes: int
    sha256: str
    counted_files: dict[str, int]


@dataclass
class LoadedArtifact:
    """An artifact read back: dequantised weights, the stored configs and metadata, and its cost."""

    state: dict[str, Tensor]
    model_config: dict[str, Any]
    run_config: dict[str, Any]
    meta: dict[str, Any]
    info: ArtifactInfo


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def pack_header(compressor: str, payload: bytes) -> bytes:
    """The fixed header that precedes the compressed payload."""
    name = compressor.encode("ascii")
    return (_FIXED.pack(MAGIC, FORMAT_VERSION, len(name)) + name
            + _TAIL.pack(len(payload), hashlib.sha256(payload).digest()))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors blob with its `__metadata__` keys sorted, so equal inputs give equal bytes.

    safetensors writes the metadata map in hash order, which varies between calls; tensor entries keep
    their order and data offsets, and the header stays space-padded to a multiple of 8 bytes."""
    (header_len,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + header_len])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + header_len:]


def write_artifact(path: str | Path, state: dict[str, Tensor], *, model_config: dict[str, Any],
                   run_config: dict[str, Any], quant: QuantConfig, keep_fp32_patterns: Sequence[str],
                   extra_meta: dict[str, Any] | None = None) -> ArtifactInfo:
    """Quantise `state`, pack it with its configs into one file at `path` (atomically), and count its bytes."""
    path = Path(path)
    quant.validate()
    tensors, qmeta = quantize_state_dict_int8(state, quant, keep_fp32_patterns)
    counted = counted_code_files()
    code_bytes = sum(counted.values())
    pgolf_meta = {
        "format_version": FORMAT_VERSION,
        "quant": qmeta,
        "compressor": quant.compressor,
        "level": quant.level,
        "code_bytes": code_bytes,
        "counted_files": counted,
        "pgolf_version": pgolf.__version__,
        "extra_meta": extra_meta or {},
    }
    metadata = {"pgolf_meta": _json(pgolf_meta), "model_config": _json(model_config), "run_config": _json(run_config)}
    raw = canonical_safetensors(safetensors_to_bytes(tensors, metadata=metadata))
    payload = compress(raw, quant.compressor, quant.level)
    blob = pack_header(quant.compressor, payload) + payload
    write_bytes_atomic(path, blob)
    return ArtifactInfo(path=path, model_bytes=len(blob), code_bytes=code_bytes, total_bytes=len(blob) + code_bytes,
                        sha256=hashlib.sha256(blob).hexdigest(), counted_files=counted)


# ---------------------------------------------------------------- read

def _not_an_artifact(path: Path, head: bytes) -> UserError:
    looks = " (it looks like a torch.save/pickle file)" if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" else ""
    return UserError(f"{path} is not a pgolf artifact (bad magic){looks}; it may be a torch.save .pt/.ptz file, "
                     f"which pgolf never unpickles; export one with `pgolf train` or `pgolf run`")


def unpack_header(path: Path, blob: bytes) -> tuple[str, bytes]:
    """Check magic, version, compressor and checksum; return (compressor, compressed payload)."""
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
    length, digest = _TAIL.unpack_from(blob, start)
    payload = blob[start + _TAIL.size:]
    if len(payload) != length or hashlib.sha256(payload).digest() != digest:
        raise UserError(f"artifact {path} fails its checksum (corrupt or truncated: {len(payload)} of {length} "
                        f"payload bytes, sha256 mismatch); re-export it")
    return name, payload


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob, parsed as plain JSON (no tensors touched)."""
    (header_len,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ is not a str -> str map")
    return meta


def _decode(path: Path, raw: bytes) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """safetensors bytes -> (dequantised state, pgolf_meta, model_config, run_config)."""
    try:
        strings = read_safetensors_metadata(raw)
        meta, model_config, run_config = (json.loads(strings[k]) for k in ("pgolf_meta", "model_config", "run_config"))
        if not all(isinstance(x, dict) for x in (meta, model_config, run_config)):
            raise ValueError("metadata entries are not JSON objects")
        tensors = safetensors_from_bytes(raw)  # safetensors: plain tensors, no code
        state = dequantize_state_dict_int8(tensors, meta["quant"])
    except Exception as exc:  # malformed input may fail in any parser; report it as one line
        raise UserError(f"artifact {path} has malformed metadata or tensors ({type(exc).__name__}: {exc}); "
                        f"re-export it") from None
    return state, meta, model_config, run_config


def read_artifact(path: str | Path) -> LoadedArtifact:
    """Read, verify and dequantise an artifact; every way it can be wrong is a one-line UserError.

    `info.code_bytes` counts the code loading it now; `meta["code_bytes"]` is the count at write time."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist; check the path or export one with `pgolf run`")
    blob = path.read_bytes()
    compressor, payload = unpack_header(path, blob)
    try:
        raw = decompress(payload, compressor)
    except Exception as exc:  # zlib.error, lzma.LZMAError, brotli.error, zstandard.ZstdError
        raise UserError(f"artifact {path} does not decompress with {compressor} ({exc}); re-export it") from None
    state, meta, model_config, run_config = _decode(path, raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"artifact {path} has metadata format {meta.get('format_version')!r}, expected "
                        f"{FORMAT_VERSION}; re-export it")
    sha = hashlib.sha256(blob).hexdigest()
    counted = counted_code_files()
    code_bytes = sum(counted.values())
    info = ArtifactInfo(path=path, model_bytes=len(blob), code_bytes=code_bytes, total_bytes=len(blob) + code_bytes,
                        sha256=sha, counted_files=counted)
    return LoadedArtifact(state=state, model_config=model_config, run_config=run_config,
                          meta={**meta, "file_sha256": sha}, info=info)


def check_budget(info: ArtifactInfo, max_bytes: int) -> None:
    """UserError when code + model bytes exceed the budget."""
    over = info.total_bytes - max_bytes
    if over > 0:
        raise UserError(f"artifact {info.path} is {info.total_bytes:,} bytes (code {info.code_bytes:,} + model "
                        f"{info.model_bytes:,}), over the {max_bytes:,} byte budget by {over:,}; "
                        f"shrink the model or raise --budget.artifact_max_bytes")
