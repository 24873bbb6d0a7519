"""Typed reading of configs from outside: `--section.field VALUE` flags and stored JSON dicts.

Both paths check every value against the field's declared type before anything runs, and both
report a mistake as one line naming the flag (or the stored field) and the fix: a string where an
int belongs, NaN, an unknown or missing field, a value outside a Literal's choices. Range checks
(a positive rope base, a compressor level in range...) are the sections' own `validate()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from typing import Any, Literal

from pgolf.config import SECTIONS, ConfigError, EvalConfig, RunConfig, TTTConfig

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def type_label(tp: Any) -> str:
    """How a field's type reads in help text and errors: `int`, `{zlib,lzma}`, `int,int,...`."""
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(tp)) + "}"
    if tp is bool:
        return "{True,False}"
    if typing.get_origin(tp) is tuple:
        return f"{type_label(typing.get_args(tp)[0])},..."
    return getattr(tp, "__name__", str(tp))


def parse_text(text: str, tp: Any, flag: str) -> Any:
    """A command-line string converted to the field's type; ConfigError naming `flag` otherwise."""
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{flag} expects True or False, got {text!r}")
    if tp is int:
        try:
            return int(text.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{flag} expects an integer, got {text!r}") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{flag} expects a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {text!r}")
        return value
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))}, got {text!r}")
        return text
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        parts = [p for p in text.split(",") if p.strip()]
        return tuple(parse_text(p, item, flag) for p in parts)
    return text


def check_value(value: Any, tp: Any, where: str) -> Any:
    """A stored (JSON) value checked strictly against the field's type; returns it in that type."""
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif typing.get_origin(tp) is Literal:
        ok = isinstance(value, str) and value in typing.get_args(tp)
    elif typing.get_origin(tp) is tuple:
        ok = isinstance(value, (list, tuple))
        if ok:
            item = typing.get_args(tp)[0]
            value = tuple(check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}={value!r:.60} is not a valid {type_label(tp)}")
    return value


# Fields added after configs were first stored, each with the value that does what a config written before
# it did: a stored section lacking one reads as that value (any other missing field is still refused).
ADDED_FIELDS: dict[type, dict[str, Any]] = {EvalConfig: {"compile": False, "ngram_order": 0, "mix_unadapted": False},
                                            TTTConfig: {"lora_steps": 1, "lora_mix_lr": 0.0, "lora_mix_rank": 0}}


def with_added_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A stored section of `cls` with the fields it predates filled in (`ADDED_FIELDS`)."""
    return {**ADDED_FIELDS.get(cls, {}), **data}


def section_from_dict(cls: type, data: Any, where: str) -> Any:
    """One config section rebuilt from a stored dict: every field present (but `ADDED_FIELDS`), typed,
    nothing unknown."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not an object")
    data = with_added_fields(cls, data)
    types = field_types(cls)
    unknown = sorted(set(data) - set(types))
    missing = sorted(set(types) - set(data))
    if unknown:
        raise ConfigError(f"{where} has unknown field {unknown[0]!r:.60}; it was written by another pgolf version")
    if missing:
        raise ConfigError(f"{where} lacks field {missing[0]!r}; it was written by another pgolf version")
    return cls(**{name: check_value(data[name], tp, f"{where}.{name}") for name, tp in types.items()})


def run_config_from_dict(data: Any, where: str = "run_config") -> RunConfig:
    """A whole RunConfig from its stored dict, type-checked field by field, then validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not an object")
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    sections = {k: section_from_dict(cls, data.get(k), f"{where}.{k}") for k, cls in SECTIONS.items()}
    top_types = {n: t for n, t in field_types(RunConfig).items() if n not in SECTIONS}
    unknown = sorted(set(top) - set(top_types))
    if unknown:
        raise ConfigError(f"{where} has unknown field {unknown[0]!r:.60}; it was written by another pgolf version")
    scalars = {n: check_value(top[n], tp, f"{where}.{n}") for n, tp in top_types.items() if n in top}
    return RunConfig(**scalars, **sections).validate()


def flag_names(cfg: RunConfig) -> dict[str, tuple[Any, str, Any]]:
    """`--section.field` -> (owner object, field name, type) for every settable field."""
    out: dict[str, tuple[Any, str, Any]] = {}
    for name, tp in field_types(RunConfig).items():
        if name in SECTIONS:
            section = getattr(cfg, name)
            for sub, sub_tp in field_types(type(section)).items():
                out[f"--{name}.{sub}"] = (section, sub, sub_tp)
        else:
            out[f"--{name}"] = (cfg, name, tp)
    return out


def apply_overrides(cfg: RunConfig, args: list[str]) -> RunConfig:
    """Set `--section.field VALUE` (or `--section.field=VALUE`) on a copy of `cfg`, then validate it."""
    cfg = dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k)) for k in SECTIONS})
    table = flag_names(cfg)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, text = arg.partition("=")
        if not flag.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; flags are --section.field VALUE (run with --help)")
        flag = "--" + flag[2:].replace("-", "_")
        if flag not in table:
            near = difflib.get_close_matches(flag, list(table), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"unknown flag {flag}{hint} (run with --help for every flag)")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"{flag} needs a value ({type_label(table[flag][2])})")
            text, i = args[i + 1], i + 1
        owner, name, tp = table[flag]
        setattr(owner, name, parse_text(text, tp, flag[2:]))
        i += 1
    return cfg.validate()


def run_config_from_changes(changes: Any, where: str = "baked config") -> RunConfig:
    """RunConfig()'s defaults with `changes` set ({section: {field: value}} and top-level field: value; each
    field known and type-checked), then validated: the compact form of a config a bundle bakes in."""
    if not isinstance(changes, dict):
        raise ConfigError(f"{where} is not an object")
    cfg = RunConfig()
    table = flag_names(cfg)
    for key, value in changes.items():
        fields = value.items() if key in SECTIONS and isinstance(value, dict) else [("", value)]
        for field, v in fields:
            name = f"{key}.{field}" if field else key
            if f"--{name}" not in table:
                raise ConfigError(f"{where} has unknown field {name!r:.60}; it was written by another pgolf version")
            owner, attr, tp = table[f"--{name}"]
            setattr(owner, attr, check_value(v, tp, f"{where}.{name}"))
    return cfg.validate()
