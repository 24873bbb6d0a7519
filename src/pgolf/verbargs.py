"""Argument handling for the verbs: a run config from `--preset NAME` and `--section.field VALUE` flags
(with `--help` listing them); and, for the verbs that take folders and a few flags rather than a run
config (`pgolf compare`, `export-record`, `verify`, `report`, and `seeds`' own flags), argparse whose
mistakes are one-line UserErrors, and helpers that pull single flags or `--section.field` overrides
out of an argument list."""

from __future__ import annotations

import argparse
from typing import NoReturn

from pgolf.config import RunConfig
from pgolf.errors import UserError
from pgolf.presets import PRESETS, get_preset

DEFAULT_PRESET = "cpu-demo"


def wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in args)


def print_config_help(usage: str, default: RunConfig) -> None:
    from pgolf.helptext import config_help

    print(config_help(default, usage, list(PRESETS)))


def parse_config(args: list[str], default: RunConfig, prog: str) -> RunConfig:
    """Apply `--section.field` overrides to a preset; a bad flag or value is a one-line ConfigError."""
    from pgolf.flags import apply_overrides

    return apply_overrides(default, args)


def split_preset(args: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--preset NAME` (or `--preset=NAME`) out of the argument list."""
    return take_flag(args, "--preset", f"--preset needs a name; choose one of: {', '.join(PRESETS)}")


def config_from_args(args: list[str], prog: str, require_preset: bool = False) -> RunConfig | None:
    """The preset with the flags applied, or None after printing the help when it was asked for."""
    preset, rest = split_preset(args)
    if wants_help(rest):
        print_config_help(f"usage: {prog} --preset NAME [--section.field VALUE ...]",
                          get_preset(preset or DEFAULT_PRESET))
        return None
    if preset is None and require_preset:
        raise UserError(f"{prog} needs --preset NAME; choose one of: {', '.join(PRESETS)}")
    return parse_config(rest, get_preset(preset or DEFAULT_PRESET), prog)


class VerbParser(argparse.ArgumentParser):
    """argparse for the verbs that take folders rather than a config: a mistake is one UserError line."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (run with --help)")


def parse_verb(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace | None:
    """Parsed arguments, or None after printing the help when it was asked for."""
    if wants_help(args):
        print(parser.format_help())
        return None
    return parser.parse_args(args)


def take_flag(args: list[str], name: str, missing: str = "") -> tuple[str | None, list[str]]:
    """Pull `--name VALUE` (or `--name=VALUE`) out of an argument list; a `--name` with no value after it is a
    UserError (`missing`, or "--name needs a value")."""
    rest: list[str] = []
    value = None
    i = 0
    while i < len(args):
        if args[i] == name:
            if i + 1 >= len(args):
                raise UserError(missing or f"{name} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(name + "="):
            value = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return value, rest


def split_config_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(`--section.field VALUE` flags, everything else)."""
    config: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i].partition("=")[0]
        if flag.startswith("--") and "." in flag:
            take = 1 if "=" in args[i] else 2
            config += args[i:i + take]
            i += take
            continue
        rest.append(args[i])
        i += 1
    return config, rest

