"""Training the SentencePiece BPE tokenizer with the challenge's exact settings (preparation only).

Settings follow openai/parameter-golf (`data/download_hf_docs_and_tokenize.py`, `tokenizer_specs.json`).
Two things differ from a naive trainer call, both so that no text is silently ignored or made
path-dependent: long lines are cut before training (SentencePiece drops any input sentence longer
than `max_sentence_length` bytes), and the model proto is taken from memory rather than from a
`model_prefix` path that would be recorded inside it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from pgolf.fileio import write_bytes_atomic
from pgolf.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

MAX_SENTENCE_BYTES = 4192  # SentencePiece's default, set explicitly so the line splitter agrees with it
_WHITESPACE = b" \t\r\n\x0b\x0c"


def trainer_settings(vocab_size: int) -> dict[str, object]:
    """The challenge's SentencePiece trainer arguments (parameter-golf `tokenizer_specs.json` recipe)."""
    return {
        "model_type": "bpe",
        "vocab_size": vocab_size,
        "character_coverage": 0.999,
        "byte_fallback": True,
        "split_digits": True,
        "normalization_rule_name": "nmt_nfkc",
        "add_dummy_prefix": False,
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "unk_id": UNK_ID,
        "hard_vocab_limit": False,
    }


def _cut_point(chunk: bytes, max_bytes: int) -> tuple[int, int]:
    """(end of this piece, start of the rest) for a chunk longer than max_bytes: the last whitespace
    within the limit, else the last UTF-8 character boundary within it."""
    window = chunk[: max_bytes + 1]
    space_at = max(window.rfind(bytes([c])) for c in _WHITESPACE)
    if space_at >= 0:
        return space_at, space_at + 1  # the whitespace byte itself is dropped at the cut
    end = max_bytes
    while chunk[end] & 0xC0 == 0x80:  # never split inside a multi-byte character
        end -= 1
    return end, end


def _split_line(line: str, max_bytes: int) -> Iterator[str]:
    """Pieces of one line, each at most max_bytes of UTF-8, together holding all its non-whitespace."""
    rest = line.encode("utf-8")
    while len(rest) > max_bytes:
        end, start = _cut_point(rest, max_bytes)
        piece, rest = rest[:end].decode("utf-8"), rest[start:]
        if piece.strip():  # blank stretches carry nothing the trainer would keep
            yield piece
    if (piece := rest.decode("utf-8")).strip():
        yield piece


def split_long_lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Every non-blank line of every text, lines over `max_bytes` UTF-8 bytes cut into pieces.

    Cuts fall at whitespace (dropped, as the normaliser would collapse it anyway), or at a character
    boundary when a stretch has none, so joining the pieces keeps all non-whitespace content.
    """
    if max_bytes < 4:
        raise ValueError(f"max_bytes={max_bytes} must be >= 4 (the longest UTF-8 character)")
    for text in texts:
        for line in text.splitlines():
            yield from _split_line(line, max_bytes)


def _capped(lines: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """Lines until their UTF-8 total would pass max_bytes (None: no cap)."""
    total = 0
    for line in lines:
        total += len(line.encode("utf-8"))
        if max_bytes is not None and total > max_bytes:
            return
        yield line


def _vocab_text(proto: bytes) -> str:
    """The `.vocab` companion file SentencePiece writes: one `piece<TAB>score` line per id."""
    sp = spm.SentencePieceProcessor(model_proto=proto)
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_path: Path, *,
                    max_text_bytes: int | None = None, num_threads: int = 2) -> Path:
    """Train a BPE tokenizer with the challenge's settings; write `model_path` and its `.vocab`.

    Deterministic: the same texts, vocab and thread count give the same model bytes (no sampling or
    shuffling of input sentences, and no output path stored in the proto).
    """
    model_path = Path(model_path)
    # The challenge replaces NUL with a space in its training text.
    cleaned = (t.replace("\x00", " ") for t in texts)
    lines = _capped(split_long_lines(cleaned, MAX_SENTENCE_BYTES), max_text_bytes)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=proto, **trainer_settings(vocab_size),
        max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=0, shuffle_input_sentence=False,
        num_threads=num_threads, minloglevel=2,  # errors still raise; only progress chatter is hidden
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(model_path, proto.getvalue())
    write_bytes_atomic(model_path.with_suffix(".vocab"), _vocab_text(proto.getvalue()).encode("utf-8"))
    return model_path
