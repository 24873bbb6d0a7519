"""Shared builders for tokenizer and metric tests: a generated English-like corpus, a tiny trained
tokenizer (built once per test session), and a minimal reader of SentencePiece's model proto.

The proto reader decodes only the protobuf wire format, so the tests need no `protobuf` package;
field numbers are those of sentencepiece's `sentencepiece_model.proto`.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from pgolf.data.spm_train import train_tokenizer

TINY_VOCAB = 384

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there one all we their can has more when would will who so no if out up time "
    "about than into them only some could then its like other what year people new first after many way "
    "because over most may also where under between through water house light small great world school "
    "number river city story market morning question garden window letter mountain energy language music"
).split()
ACCENTED = ["café", "naïve", "résumé", "façade", "Zoë", "jalapeño", "über", "señor", "coöperate", "crème"]
PUNCT = [".", ",", ";", ":", "!", "?", " —", " (see above)", ' "quoted"', "'s", " - "]
RARE = ["日本語", "中文", "한국어", "😀", "🎉", "🚀", "Ελλάδα", "Москва"]  # rare enough to need byte fallback


def _number(rng: random.Random) -> str:
    return rng.choice([str(rng.randint(0, 99)), str(rng.randint(1900, 2030)),
                       f"{rng.randint(1, 999)}.{rng.randint(0, 99)}", f"${rng.randint(1, 5000)}",
                       f"{rng.randint(1, 12)}/{rng.randint(1, 28)}"])


def _word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.04:
        return rng.choice(ACCENTED)
    if r < 0.10:
        return _number(rng)
    if r < 0.1015:
        return rng.choice(RARE)
    w = rng.choice(WORDS)
    return w.capitalize() if rng.random() < 0.05 else w


def _sentence(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(4, 18))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(PUNCT[:6]) + (rng.choice(PUNCT[6:]) if rng.random() < 0.1 else "")


def make_documents(total_bytes: int, seed: int = 0) -> list[str]:
    """English-like documents (paragraphs split by newlines) totalling about `total_bytes` of UTF-8."""
    rng = random.Random(seed)
    docs, size = [], 0
    while size < total_bytes:
        paras = [" ".join(_sentence(rng) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5))]
        doc = "\n".join(paras)
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs


_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 384-piece tokenizer trained on ~300 KB of generated text, built once per session."""
    if "tiny" not in _CACHE:
        path = tmp_path_factory.mktemp("tok") / "tiny_384_bpe.model"
        _CACHE["tiny"] = train_tokenizer(make_documents(300_000), TINY_VOCAB, path)
    return _CACHE["tiny"]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def proto_fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> raw values (varint as int, length-delimited and fixed-width as bytes)."""
    out: dict[int, list[int | bytes]] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i: i + n], i + n
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = buf[i: i + width], i + width
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def as_float(raw: bytes) -> float:
    return struct.unpack("<f", raw)[0]


def model_specs(model_bytes: bytes) -> tuple[dict[int, list[int | bytes]], dict[int, list[int | bytes]]]:
    """(trainer_spec, normalizer_spec) fields of a serialized ModelProto (fields 2 and 3)."""
    top = proto_fields(model_bytes)
    return proto_fields(top[2][0]), proto_fields(top[3][0])
