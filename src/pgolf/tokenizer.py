"""SentencePiece tokenizer at scoring time: loading, encoding, and the byte lookup tables behind val_bpb.

The lookup tables follow openai/parameter-golf (`train_gpt.py::build_sentencepiece_luts`); the
challenge's own `fineweb_1024_bpe.model` loads and measures through the same code. Training a
tokenizer is preparation, not scoring: it lives in `pgolf.data.spm_train`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from pgolf.errors import UserError

BOS_ID, EOS_ID, PAD_ID, UNK_ID = 1, 2, 0, 3
SPACE_PIECE = "\u2581"  # "▁", SentencePiece's visible stand-in for a space


def load_tokenizer(path: str | Path, expected_vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model, failing with a one-line UserError the user can act on."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer {path} not found; run `pgolf prepare` (or `pgolf data fineweb`) "
                        "to build it, or point --data.tokenizer_path at an existing .model file")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (RuntimeError, OSError) as e:
        raise UserError(f"tokenizer {path} is not a valid SentencePiece model ({str(e).splitlines()[0][:120]}); "
                        "delete it and run `pgolf prepare` again") from None
    if expected_vocab_size is not None and sp.vocab_size() != expected_vocab_size:
        raise UserError(f"tokenizer {path} has vocab {sp.vocab_size()} but model.vocab_size is "
                        f"{expected_vocab_size}; set --model.vocab_size {sp.vocab_size()} or use a matching tokenizer")
    return sp


def encode_documents(sp: spm.SentencePieceProcessor, texts: Sequence[str], num_threads: int = -1) -> list[np.ndarray]:
    """Token ids of each document as uint16 (no BOS: the shard writer adds it)."""
    if sp.vocab_size() > 1 << 16:
        raise ValueError(f"vocab {sp.vocab_size()} does not fit the uint16 shard format")
    ids = sp.encode(list(texts), num_threads=num_threads)  # -1: SentencePiece picks the thread count
    return [np.asarray(doc, dtype=np.uint16) for doc in ids]


@dataclass(frozen=True)
class ByteLuts:
    """The metric's per-token tables (index = token id; length = max(tokenizer vocab, model vocab))."""

    base_bytes: torch.Tensor  # (V,) int16: UTF-8 bytes of the piece without its leading "▁"
    has_leading_space: torch.Tensor  # (V,) bool: piece starts with "▁" (one space byte, unless after a boundary)
    is_boundary: torch.Tensor  # (V,) bool: control/unknown/unused ids and padding ids; count 0 bytes

    def to(self, device: torch.device | str) -> ByteLuts:
        return ByteLuts(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteLuts:
    """The challenge's `build_sentencepiece_luts`: bytes each token adds to the scored text."""
    sp_vocab = sp.vocab_size()
    if sp.piece_to_id(SPACE_PIECE) == sp.unk_id():
        # Without a lone "▁" piece a space before a byte-fallback character is spelled as the three
        # bytes of "▁" itself and counted as 3 bytes instead of 1 (parameter-golf issue #897).
        raise UserError(f"tokenizer has no lone '{SPACE_PIECE}' piece, so val_bpb would miscount spaces; "
                        "retrain it with `pgolf prepare --prepare.force True`")
    size = max(sp_vocab, vocab_size)
    base = np.zeros(size, dtype=np.int16)
    space = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)
    for i in range(sp_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE_PIECE):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLuts(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
