"""Tokenizer: the challenge's trainer settings land in the model, no training text is dropped,
training is reproducible, and load errors are one actionable line."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from helpers_text import TINY_VOCAB, as_float, make_documents, model_specs
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.errors import UserError
from pgolf.data.spm_train import MAX_SENTENCE_BYTES, split_long_lines, train_tokenizer, trainer_settings
from pgolf.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    build_byte_luts,
    encode_documents,
    file_sha256,
    load_tokenizer,
)

BPE = 2  # TrainerSpec.ModelType.BPE


def test_trainer_settings_are_the_challenges() -> None:
    assert trainer_settings(1024) == {
        "model_type": "bpe", "vocab_size": 1024, "character_coverage": 0.999, "byte_fallback": True,
        "split_digits": True, "normalization_rule_name": "nmt_nfkc", "add_dummy_prefix": False,
        "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "hard_vocab_limit": False,
    }
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)


def test_model_proto_records_challenge_settings(tiny_tokenizer: Path) -> None:
    trainer, normalizer = model_specs(tiny_tokenizer.read_bytes())
    # TrainerSpec field numbers: model_type 3, vocab_size 4, character_coverage 10,
    # max_sentence_length 18, split_digits 25, hard_vocab_limit 33, byte_fallback 35, ids 40-43.
    assert trainer[3] == [BPE] and trainer[4] == [TINY_VOCAB]
    assert as_float(trainer[10][0]) == pytest.approx(0.999, abs=1e-6)
    assert trainer[18] == [MAX_SENTENCE_BYTES]
    assert trainer[25] == [1] and trainer[35] == [1] and trainer[33] == [0]
    assert (trainer[40], trainer[41], trainer[42], trainer[43]) == ([UNK_ID], [BOS_ID], [EOS_ID], [PAD_ID])
    assert 2 not in trainer, "no model_prefix path is recorded, so the bytes do not depend on where it was built"
    # NormalizerSpec: name 1, add_dummy_prefix 3
    assert normalizer[1] == [b"nmt_nfkc"] and normalizer[3] == [0]
    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # split_digits
    assert sp.encode("日", out_type=str) == ["<0xE6>", "<0x97>", "<0xA5>"]  # byte fallback


def _non_space(s: str) -> str:
    return "".join(s.split())


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.lists(st.sampled_from(list("ab \n\t\ré日😀\u3000\u2028") + ["\r\n", "word"]), max_size=120).map("".join),
       max_bytes=st.integers(4, 24))
def test_split_long_lines_keeps_everything_within_limit(text: str, max_bytes: int) -> None:
    pieces = list(split_long_lines([text], max_bytes))
    assert all(len(p.encode("utf-8")) <= max_bytes for p in pieces)
    assert all("\n" not in p and p.strip() for p in pieces)
    assert _non_space("".join(pieces)) == _non_space(text)


def test_split_long_lines_cuts_at_whitespace_then_characters() -> None:
    line = "alpha beta gamma " + "é" * 10
    assert list(split_long_lines([line, "short\nlines"], 8)) == ["alpha", "beta", "gamma", "éééé", "éééé", "éé",
                                                                  "short", "lines"]


def _train_raw(lines: list[str], vocab_size: int) -> spm.SentencePieceProcessor:
    """SentencePiece fed whole lines, as a naive caller would."""
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=proto, **trainer_settings(vocab_size),
                                   max_sentence_length=MAX_SENTENCE_BYTES, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


def test_long_line_is_not_dropped_from_training(tmp_path: Path) -> None:
    # The only "ж" in the corpus sits in one line far longer than SentencePiece's sentence limit.
    long_line = " ".join(["жжж"] * 2000)
    assert len(long_line.encode("utf-8")) > MAX_SENTENCE_BYTES
    docs = make_documents(40_000, seed=1) + [long_line]
    naive = _train_raw([ln for d in docs for ln in d.splitlines()], 384)
    assert naive.piece_to_id("ж") == naive.unk_id(), "control: the trainer silently drops the long line"
    sp = load_tokenizer(train_tokenizer(docs, 384, tmp_path / "t.model"))
    assert sp.piece_to_id("ж") != sp.unk_id()
    capped = load_tokenizer(train_tokenizer(docs, 384, tmp_path / "c.model", max_text_bytes=30_000))
    assert capped.piece_to_id("ж") == capped.unk_id(), "text past max_text_bytes is not used"


def test_training_is_deterministic_and_atomic(tmp_path: Path) -> None:
    docs = make_documents(60_000, seed=2)
    a = train_tokenizer(docs, 384, tmp_path / "a" / "nested" / "tok.model")
    b = train_tokenizer(iter(docs), 384, tmp_path / "b" / "tok.model")
    assert a.read_bytes() == b.read_bytes()
    assert file_sha256(a) == hashlib.sha256(b.read_bytes()).hexdigest()
    assert a.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()[BOS_ID].startswith("<s>\t")
    assert sorted(p.name for p in a.parent.iterdir()) == ["tok.model", "tok.vocab"]  # no temp files left


def test_load_tokenizer_errors_name_the_file(tmp_path: Path, tiny_tokenizer: Path) -> None:
    missing = tmp_path / "nope.model"
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\xff\x00 this is not a protobuf" * 10)
    cases = [(missing, None, "pgolf prepare"), (garbage, None, "not a valid"),
             (tiny_tokenizer, 1024, f"has vocab {TINY_VOCAB} but model.vocab_size is 1024")]
    for path, vocab, hint in cases:
        with pytest.raises(UserError) as err:
            load_tokenizer(path, vocab)
        msg = str(err.value)
        assert str(path) in msg and hint in msg and "\n" not in msg


def test_encode_documents_is_uint16_without_bos(tiny_tokenizer: Path) -> None:
    sp = load_tokenizer(tiny_tokenizer)
    docs = ["The river café, 1999.", "", "naïve 😀 question"]
    out = encode_documents(sp, docs)
    assert [a.dtype for a in out] == [np.uint16] * 3
    assert [a.tolist() for a in out] == [sp.encode(d) for d in docs]
    assert all(BOS_ID not in a for a in out)


def test_luts_need_a_lone_space_piece(tmp_path: Path) -> None:
    # Text with no spaces at all: "▁" never becomes a piece (parameter-golf issue #897).
    docs = ["".join(d.split()) for d in make_documents(30_000, seed=3)]
    sp = load_tokenizer(train_tokenizer(docs, 384, tmp_path / "nospace.model"))
    assert sp.piece_to_id("\u2581") == sp.unk_id()
    with pytest.raises(UserError, match="miscount spaces"):
        build_byte_luts(sp, 384)
