"""What a reviewer reads off a training log: the code that ran, the experiment, the data, the bytes and
the final score, from the lines pgolf writes (and the challenge's own line formats where pgolf writes
those too).

Lines read (first match wins; a fact whose line is absent is None):
- `code_sha256 <64 hex> bytes <n>`: the counted code (the bundle) that produced the run.
- `... | experiment <12 hex> | ...` in the header line: the seed-free config hash.
- `data k v | k v | ...`: the data fingerprint.
- model bytes: pgolf's `artifact PATH: T bytes = code C + model M`, else the challenge's
  `Serialized model ...: N bytes`.
- final score: the challenge's `final_<export>_roundtrip_exact val_loss:X val_bpb:Y`, else
  `final_<export>_roundtrip val_loss:X val_bpb:Y`, else pgolf's summary lines `val_bpb X  (roundtrip ...`
  and `val_loss X nats/token`. Each number carries the decimals it was printed with, so a comparison
  can allow exactly the rounding of the print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CODE_LINE = re.compile(r"^code_sha256 ([0-9a-f]{64}) bytes (\d+)\s*$", re.M)
EXPERIMENT = re.compile(r"(?:^|\| )experiment ([0-9a-f]{12})(?: \||\s*$)", re.M)
DATA_LINE = re.compile(r"^data (.+)$", re.M)
PGOLF_BYTES = re.compile(r"^artifact .*: ([\d,]+) bytes = code ([\d,]+) \+ model ([\d,]+)", re.M)
CHALLENGE_BYTES = re.compile(r"^Serialized model[^:\n]*: (\d+) bytes", re.M)
EXACT_SCORE = re.compile(r"^final_\w+?_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)
ROUNDTRIP_SCORE = re.compile(r"^final_\w+?_roundtrip val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)
PGOLF_BPB = re.compile(r"^val_bpb ([\d.]+)\s+\(roundtrip", re.M)
PGOLF_LOSS = re.compile(r"^val_loss ([\d.]+) nats/token", re.M)


@dataclass(frozen=True)
class Printed:
    """A number as a log printed it: its value and how many decimals it was printed with."""

    value: float
    decimals: int

    @classmethod
    def parse(cls, text: str) -> "Printed":
        return cls(float(text), len(text.partition(".")[2]))

    def matches(self, exact: float, slack: float = 1e-12) -> bool:
        """Whether `exact` rounds to this printed value (half a unit in the last printed place)."""
        return abs(exact - self.value) <= 0.5 * 10.0 ** (-self.decimals) + slack


@dataclass(frozen=True)
class LogFacts:
    """The facts of one log; None where the log has no line for it."""

    code_sha256: str | None = None
    code_bytes: int | None = None
    experiment_hash: str | None = None
    data: dict[str, str] = field(default_factory=dict)
    model_bytes: int | None = None
    val_bpb: Printed | None = None
    val_loss: Printed | None = None


def parse_data_line(text: str) -> dict[str, str]:
    """`k v | k v` -> {k: v} (a value may hold spaces; the key is the first word of each part)."""
    out: dict[str, str] = {}
    for part in text.split(" | "):
        key, _, value = part.strip().partition(" ")
        if key:
            out[key] = value.strip()
    return out


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def scan_log(text: str) -> LogFacts:
    """Every fact the log states (see the module docstring for the lines read)."""
    code = CODE_LINE.search(text)
    exp = EXPERIMENT.search(text)
    data = DATA_LINE.search(text)
    pg_bytes = PGOLF_BYTES.search(text)
    ch_bytes = CHALLENGE_BYTES.search(text)
    model_bytes = _int(pg_bytes.group(3)) if pg_bytes else (_int(ch_bytes.group(1)) if ch_bytes else None)
    score = EXACT_SCORE.search(text) or ROUNDTRIP_SCORE.search(text)
    if score:
        loss, bpb = Printed.parse(score.group(1)), Printed.parse(score.group(2))
    else:
        pb, pl = PGOLF_BPB.search(text), PGOLF_LOSS.search(text)
        bpb = Printed.parse(pb.group(1)) if pb else None
        loss = Printed.parse(pl.group(1)) if pl else None
    return LogFacts(code_sha256=code.group(1) if code else None, code_bytes=int(code.group(2)) if code else None,
                    experiment_hash=exp.group(1) if exp else None,
                    data=parse_data_line(data.group(1)) if data else {}, model_bytes=model_bytes,
                    val_bpb=bpb, val_loss=loss)


def scan_log_file(path: Path) -> LogFacts:
    return scan_log(path.read_text(encoding="utf-8", errors="replace"))
