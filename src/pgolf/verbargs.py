"""Argument handling for the verbs that take folders and a few flags rather than a run config
(`pgolf compare`, `export-record`, `verify`, `report`, and `seeds`' own flags): argparse whose
mistakes are one-line UserErrors, and helpers that pull single flags or `--section.field` overrides
out of an argument list."""

from __future__ import annotations

import argparse
from typing import NoReturn

from pgolf.errors import UserError


def wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in args)


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


def take_flag(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Pull `--name VALUE` (or `--name=VALUE`) out of an argument list."""
    rest: list[str] = []
    value = None
    i = 0
    while i < len(args):
        if args[i] == name:
            if i + 1 >= len(args):
                raise UserError(f"{name} needs a value")
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

