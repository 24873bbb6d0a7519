"""Help text for the command line: every flag with its type, default and the one-line doc written
under its field in `pgolf.config` (attribute docstrings, read from the source with `ast`).

Kept apart from the flag parser so the shipped single-file bundle does not carry the help.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

from pgolf import config
from pgolf.flags import field_types, type_label


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (first paragraph, one line)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split("\n\n")[0].split())
    return docs


def flag_lines(obj: Any, prefix: str, dashes: bool = False) -> list[str]:
    """One help line per field of a (flat) dataclass instance: flag, type, default, doc."""
    lines = []
    docs = field_docs(type(obj))
    for name, tp in field_types(type(obj)).items():
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        flag = name.replace("_", "-") if dashes else name
        lines.append(f"  {prefix}{flag} {type_label(tp)}  {docs.get(name, '')} (default: {shown})")
    return lines


def config_help(cfg: config.RunConfig, usage: str, presets: list[str]) -> str:
    """The full help of a verb that takes a run config: usage, presets, then every flag by section."""
    out = [usage, "", "presets: " + ", ".join(presets), "", "run:"]
    out += flag_lines(cfg, "--")
    for key in config.SECTIONS:
        section = getattr(cfg, key)
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        out += ["", f"{key}: {doc}"] + flag_lines(section, f"--{key}.")
    return "\n".join(out)
