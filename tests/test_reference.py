"""The reference compressors run on a bounded sample of whole validation documents, labelled as such."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers_text import TINY_VOCAB, make_documents

from pgolf.pipeline import reference_line
from pgolf.reference import reference_figures, val_text_bytes
from pgolf.tokenizer import BOS_ID, encode_documents, load_tokenizer


def stream(tiny_tokenizer: Path) -> tuple[np.ndarray, object, list[str]]:
    sp = load_tokenizer(tiny_tokenizer, TINY_VOCAB)
    docs = make_documents(6_000, seed=3)
    ids = encode_documents(sp, docs)
    return np.concatenate([np.concatenate(([BOS_ID], d)) for d in ids]).astype(np.uint16), sp, docs


def test_whole_text_when_it_fits_and_a_labelled_sample_otherwise(tiny_tokenizer: Path) -> None:
    tokens, sp, docs = stream(tiny_tokenizer)
    whole = val_text_bytes(tokens, sp)
    assert whole.count(b"\n") == len(docs) - 1
    full = reference_figures(tokens, sp, len(whole) + 10)
    assert full["whole_text"] and full["sample_bytes"] == len(whole)
    part = reference_figures(tokens, sp, len(whole) // 3)
    assert not part["whole_text"] and 0 < part["sample_bytes"] <= len(whole) // 3
    assert whole.startswith(val_text_bytes(tokens, sp, len(whole) // 3))  # whole documents from the start
    assert "sample" in reference_line(part) and "same text" in reference_line(full)
    assert reference_figures(tokens, sp, 0) is None and "off" in reference_line(None)
