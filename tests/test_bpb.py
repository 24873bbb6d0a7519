"""The metric: bytes per target token by hand, bpb by hand, and for random documents the bytes the
metric counts equal the UTF-8 length of the text SentencePiece actually encodes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from helpers_text import TINY_VOCAB
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.eval.bpb import BpbTotals, bits_per_byte, target_byte_counts
from pgolf.tokenizer import BOS_ID, EOS_ID, ByteLuts, build_byte_luts, load_tokenizer

# A hand-made vocabulary: id -> (piece, kind), laid out like a SentencePiece model.
HAND_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "<0xC3>", "\u2581the", "é", "1", "cat", "\u2581", "\u2581café"]
THE, E_ACUTE, ONE, CAT, SPACE, CAFE = 5, 6, 7, 8, 9, 10
BYTE_C3 = 4


def hand_luts() -> ByteLuts:
    base = [0, 0, 0, 0, 1, 3, 2, 1, 3, 0, 5, 0]  # id 11: padding past the tokenizer's vocab
    space = [False] * 5 + [True, False, False, False, True, True, False]
    boundary = [True] * 4 + [False] * 7 + [True]
    return ByteLuts(torch.tensor(base, dtype=torch.int16), torch.tensor(space), torch.tensor(boundary))


def counts(prev: list[int], tgt: list[int], luts: ByteLuts) -> list[int]:
    return target_byte_counts(torch.tensor(prev), torch.tensor(tgt), luts).tolist()


def test_hand_byte_counts() -> None:
    luts = hand_luts()
    assert counts([BOS_ID], [THE], luts) == [3]  # "▁the" after BOS: no phantom space
    assert counts([CAT], [THE], luts) == [4]  # after a word the space is a byte
    assert counts([EOS_ID], [THE], luts) == [3]  # any control token is a boundary
    assert counts([CAT], [BYTE_C3], luts) == [1]  # byte fallback: one byte each
    assert counts([CAT], [E_ACUTE], luts) == [2]  # "é" is two UTF-8 bytes
    assert counts([CAT], [BOS_ID, EOS_ID, 0, 3, 11], luts) == [0] * 5  # control, unknown, padding ids
    assert counts([ONE, ONE, ONE], [ONE, ONE, ONE], luts) == [1, 1, 1]  # split digits: one byte each
    assert counts([CAT], [SPACE], luts) == [1]  # a lone "▁" is one space byte
    assert counts([BOS_ID], [CAFE], luts) == [5] and counts([THE], [CAFE], luts) == [6]


def test_byte_counts_keep_shape_and_dtype() -> None:
    prev = torch.tensor([[BOS_ID, THE], [CAT, SPACE]])
    tgt = torch.tensor([[THE, CAT], [THE, CAFE]])
    out = target_byte_counts(prev, tgt, hand_luts())
    assert out.dtype == torch.int64 and out.tolist() == [[3, 3], [4, 6]]


def test_bpb_by_hand() -> None:
    # BOS -> "cat" (3 bytes) -> "▁the" (4, space counted) -> "é" (2) spells "cat theé": 9 bytes.
    tokens = torch.tensor([BOS_ID, CAT, THE, E_ACUTE])
    nll = torch.tensor([2.0, 1.5, 0.5])  # nats for the three targets
    totals = BpbTotals.zeros()
    totals.add(nll[:2], tokens[:2], tokens[1:3], hand_luts())  # two calls accumulate like one
    totals.add(nll[2:], tokens[2:3], tokens[3:], hand_luts())
    assert totals.token_count.item() == 3 and totals.byte_count.item() == 9
    assert totals.nll_sum.dtype == torch.float64
    assert totals.loss == pytest.approx(4.0 / 3)
    assert totals.bits_per_token == pytest.approx(4.0 / 3 / math.log(2))
    assert totals.bpb == pytest.approx(4.0 / math.log(2) / 9)
    assert bits_per_byte(4.0, 9) == pytest.approx(0.6411978, rel=1e-6)
    totals.all_reduce()  # one process: sums unchanged
    assert (totals.nll_sum.item(), totals.token_count.item(), totals.byte_count.item()) == (4.0, 3.0, 9.0)


def test_masked_add_equals_selected_add() -> None:
    prev = torch.tensor([[BOS_ID, CAT, THE], [CAT, SPACE, ONE]])
    tgt = torch.tensor([[CAT, THE, E_ACUTE], [SPACE, CAFE, ONE]])
    nll = torch.tensor([[1.0, float("inf"), 0.25], [0.5, 2.0, float("nan")]])  # unscored values never leak
    mask = torch.tensor([[True, False, True], [True, True, False]])  # bytes 3 + 2 + 1 + 6
    masked, selected = BpbTotals.zeros(), BpbTotals.zeros()
    masked.add(nll, prev, tgt, hand_luts(), mask=mask)
    selected.add(nll[mask], prev[mask], tgt[mask], hand_luts())
    assert (masked.nll_sum.item(), masked.token_count.item(), masked.byte_count.item()) == (3.75, 4.0, 12.0)
    assert (selected.nll_sum.item(), selected.token_count.item(), selected.byte_count.item()) == (3.75, 4.0, 12.0)


def test_trained_luts_match_pieces(tiny_tokenizer: Path) -> None:
    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    luts = build_byte_luts(sp, TINY_VOCAB + 16)
    assert luts.base_bytes.shape == luts.has_leading_space.shape == luts.is_boundary.shape == (TINY_VOCAB + 16,)
    assert luts.base_bytes.dtype == torch.int16
    assert luts.is_boundary[[0, 1, 2, 3]].all() and luts.is_boundary[TINY_VOCAB:].all()
    assert luts.base_bytes[[0, 1, 2, 3]].tolist() == [0, 0, 0, 0]
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and (luts.base_bytes[byte_ids] == 1).all() and not luts.is_boundary[byte_ids].any()
    the, e_acute, space = sp.piece_to_id("\u2581the"), sp.piece_to_id("é"), sp.piece_to_id("\u2581")
    assert (luts.base_bytes[the].item(), luts.has_leading_space[the].item()) == (3, True)
    assert (luts.base_bytes[e_acute].item(), luts.has_leading_space[e_acute].item()) == (2, False)
    assert (luts.base_bytes[space].item(), luts.has_leading_space[space].item()) == (0, True)
    digits = sp.encode("2024")
    assert len(digits) == 4 and luts.base_bytes[digits].tolist() == [1, 1, 1, 1]


def normalized_bytes(sp: spm.SentencePieceProcessor, doc: str) -> int:
    """UTF-8 length of what SentencePiece encodes: its normaliser's output, "▁" read as a space.

    `sp.normalize` (sentencepiece >= 0.2) is the reference rather than decode(encode(doc)): it does
    not go through the piece table under test, and with byte fallback the two agree (asserted).
    """
    text = sp.normalize(doc).replace("\u2581", " ")
    assert text == sp.decode(sp.encode(doc))
    return len(text.encode("utf-8"))


def stream_bytes(tokens: list[int], luts: ByteLuts) -> int:
    t = torch.tensor(tokens)
    return int(target_byte_counts(t[:-1], t[1:], luts).sum())


# Letters, spaces (runs too), digits, accents, a combining accent, NFKC-folded forms, CJK, emoji,
# newlines and tabs; "▁" itself is left out because the metric counts it as a space.
ALPHABET = list("theriv cafTHE  0123456789.,!?-—éïñü日本語😀🎉\n\t\u00a0\u3000ﬁ①Ａ") + ["e\u0301", "x"]
documents = st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, database=None)
@given(doc=documents)
def test_counted_bytes_equal_normalized_text(tiny_tokenizer: Path, doc: str) -> None:
    sp = load_tokenizer(tiny_tokenizer)
    luts = build_byte_luts(sp, TINY_VOCAB)
    assert stream_bytes([BOS_ID] + sp.encode(doc), luts) == normalized_bytes(sp, doc)


@settings(max_examples=60, deadline=None, database=None)
@given(docs=st.lists(documents, min_size=1, max_size=5))
def test_counted_bytes_over_a_stream_of_documents(tiny_tokenizer: Path, docs: list[str]) -> None:
    sp = load_tokenizer(tiny_tokenizer)
    luts = build_byte_luts(sp, TINY_VOCAB)
    stream = [t for doc in docs for t in [BOS_ID] + sp.encode(doc)]
    assert stream_bytes(stream, luts) == sum(normalized_bytes(sp, d) for d in docs)
