"""The error a bad config raises, and the checks every section's `validate` is written with."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class ConfigError(ValueError):
    """A configuration a user wrote that cannot run; the message names the flag and the fix."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_finite(section: Any, prefix: str) -> None:
    """Every float field of a section is a finite number (NaN and inf slip past range checks)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            require(math.isfinite(value), f"{prefix}.{f.name}={value} must be a finite number")
