"""Named whole-run configurations: each preset is a function returning a complete, validated RunConfig.

- `pgolf.presets.base`: the challenge baseline, the CPU-track baseline, the demo, the test preset, and
  `derive` (a preset as the fields it changes on top of another);
- `pgolf.presets.records`: the seed records in the challenge budget (`record-332`, `record-414`,
  `record-609`, `record-1992-legal`);
- `pgolf.presets.cpu_records`: the same switches on the CPU track (`cpu-record-*`), and `cpu-record-tuned`,
  what measured best on the CPU track itself;
- `pgolf.presets.techniques`: each record's techniques and whether pgolf builds them (data).
"""

from __future__ import annotations

from collections.abc import Callable

from pgolf.config import RunConfig
from pgolf.errors import UserError
from pgolf.presets.base import (CPU_ARTIFACT_MAX_BYTES, CPU_TRAIN_SECONDS, baseline_8xh100, cpu_baseline, cpu_demo,
                                derive, tiny)
from pgolf.presets.cpu_records import (cpu_record_332, cpu_record_414, cpu_record_609, cpu_record_1992_legal,
                                      cpu_record_tuned)
from pgolf.presets.records import record_332, record_414, record_609, record_1992_legal

__all__ = ["CPU_ARTIFACT_MAX_BYTES", "CPU_TRAIN_SECONDS", "PRESETS", "baseline_8xh100", "cpu_baseline", "cpu_demo",
           "derive", "get_preset", "tiny"]

PRESETS: dict[str, Callable[[], RunConfig]] = {
    "cpu-demo": cpu_demo,
    "cpu-baseline": cpu_baseline,
    "baseline-8xh100": baseline_8xh100,
    "test-tiny": tiny,
    "record-332": record_332,
    "record-414": record_414,
    "record-609": record_609,
    "record-1992-legal": record_1992_legal,
    "cpu-record-332": cpu_record_332,
    "cpu-record-414": cpu_record_414,
    "cpu-record-609": cpu_record_609,
    "cpu-record-1992-legal": cpu_record_1992_legal,
    "cpu-record-tuned": cpu_record_tuned,
}


def get_preset(name: str) -> RunConfig:
    """The named preset's config; a one-line UserError listing the valid names otherwise."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
