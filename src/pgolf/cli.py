"""The `pgolf` command: one verb per pipeline stage, typed flags from the config dataclasses.

    pgolf prepare  [--preset P] [--prepare.* --data.*]   embedded corpus -> tokenizer -> shards
    pgolf train    [--preset P] [overrides]              train and export the artifact (no final eval)
    pgolf eval ARTIFACT [--data.* --eval.* --ttt.*]      score an artifact (roundtrip), write compliance.json
    pgolf run      --preset P [overrides]                every stage, then a summary
    pgolf data fineweb --variant sp1024 --train-shards N  download the challenge's data
    pgolf presets                                        list presets

Flags are `--section.field VALUE` (e.g. `--model.num_layers 11`), parsed by tyro from the dataclasses
in `config.py`. User mistakes exit with code 2 and one line naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.config import ConfigError, RunConfig
from pgolf.errors import UserError
from pgolf.presets import PRESETS, get_preset

DEFAULT_PRESET = "cpu-demo"
USAGE = "usage: pgolf {" + ",".join(("prepare", "train", "eval", "run", "data", "presets")) + "} [--preset NAME] [--section.field VALUE ...]"


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
    rest: list[str] = []
    preset = None
    i = 0
    while i < len(args):
        if args[i] == "--preset":
            if i + 1 >= len(args):
                raise UserError(f"--preset needs a name; choose one of: {', '.join(PRESETS)}")
            preset, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--preset="):
            preset = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return preset, rest


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


def _init_dist() -> Any:
    from pgolf import dist

    return dist.init()


def cmd_prepare(args: list[str]) -> int:
    """Build the tokenizer and shards of the embedded corpus for a preset's data settings."""
    from pgolf.prepare import prepare

    cfg = config_from_args(args, "pgolf prepare")
    if cfg is None:
        return 0
    if cfg.data.source != "embedded":
        raise UserError(f"data.source is {cfg.data.source!r}; `pgolf prepare` builds the embedded corpus — "
                        f"use `pgolf data fineweb` for the challenge data")
    prepare(cfg)
    return 0


def ensure_data(cfg: RunConfig, info: Any) -> None:
    """Prepare the embedded corpus on rank 0 (others wait) or check that FineWeb shards exist."""
    from pgolf import dist
    from pgolf.data.shards import list_shards
    from pgolf.tokenizer import load_tokenizer

    if cfg.data.source == "embedded":
        if info.is_main:
            from pgolf.prepare import prepare

            prepare(cfg)
        dist.barrier()
    else:
        try:
            list_shards(cfg.dataset_dir, "train")
        except UserError:
            raise UserError(f"no FineWeb shards in {cfg.dataset_dir}; download them with "
                            f"`pgolf data fineweb --variant sp{cfg.model.vocab_size} --train-shards 80`") from None
    # Shards carry no vocabulary of their own: the tokenizer must match the model's.
    load_tokenizer(cfg.tokenizer_path, cfg.model.vocab_size)


def cmd_train(args: list[str]) -> int:
    """Train a preset (with overrides) and export its artifact; no final evaluation."""
    from pgolf import dist
    from pgolf.pipeline import train_and_export

    cfg = config_from_args(args, "pgolf train")
    if cfg is None:
        return 0
    info = _init_dist()
    try:
        ensure_data(cfg, info)
        train_and_export(cfg, info, command="pgolf train " + shlex.join(args))
    finally:
        dist.shutdown()
    return 0


def cmd_eval(args: list[str]) -> int:
    """Score an artifact file on the validation shards (its own eval settings unless overridden) and write
    compliance.json beside it; exit status 1 when the evaluation is not compliant."""
    from pgolf import dist
    from pgolf.artifact import read_artifact
    from pgolf.eval.compliance import COMPLIANCE_NAME, evaluate_with_report, format_report
    from pgolf.scoring import eval_line

    if wants_help(args):
        preset, _ = split_preset(args)
        print_config_help("usage: pgolf eval ARTIFACT [--preset NAME] [--data.* --eval.* --ttt.* ...]\n\n"
                          "Scores ARTIFACT on the validation shards with the data and eval settings stored in it,\n"
                          "or those of --preset, with any flag overriding them (--eval.ttt chunked|lora adapts\n"
                          "score-first), and writes compliance.json next to it.", get_preset(preset or DEFAULT_PRESET))
        return 0
    if not args or args[0].startswith("-"):
        raise UserError("pgolf eval needs the artifact path first: pgolf eval runs/NAME/final_model.int8.ptz [--data.* --eval.*]")
    path, rest = args[0], args[1:]
    if not Path(path).exists():
        raise UserError(f"artifact {path} does not exist; train one with `pgolf run --preset cpu-demo`")
    preset, rest = split_preset(rest)
    default = get_preset(preset) if preset else _config_stored_in(read_artifact(path).run_config)
    cfg = parse_config(rest, default, "pgolf eval ARTIFACT")
    info = _init_dist()
    try:
        scored, report = evaluate_with_report(path, cfg, info, check_bytes=True)
    finally:
        dist.shutdown()
    if info.is_main:
        print(eval_line(scored.result, cfg, scored.info.total_bytes))
        print("\n".join(format_report(report)))
        print(f"compliance report: {Path(path).with_name(COMPLIANCE_NAME)}")
    return 0 if report["compliant"] else 1


def _config_stored_in(run_config: dict[str, Any]) -> RunConfig:
    """The run config an artifact was trained with, so `pgolf eval` reuses its data and eval geometry."""
    from pgolf.config import run_config_from_dict

    try:
        return run_config_from_dict(run_config)
    except (TypeError, ValueError) as exc:
        raise UserError(f"the artifact's stored run config cannot be read ({exc}); pass --preset NAME") from None


def cmd_run(args: list[str]) -> int:
    """Every stage for a preset: prepare (embedded data), train, export, roundtrip, evaluate, summary."""
    from pgolf import dist
    from pgolf.pipeline import run

    cfg = config_from_args(args, "pgolf run", require_preset=True)
    if cfg is None:
        return 0
    info = _init_dist()
    try:
        ensure_data(cfg, info)
        summary = run(cfg, info, command="pgolf run " + shlex.join(args))
    finally:
        dist.shutdown()
    if not summary["within_byte_budget"]:
        raise UserError(f"artifact {summary['artifact']} is {summary['total_bytes']:,} bytes, over the "
                        f"{summary['artifact_max_bytes']:,} byte budget; shrink the model or change --quant.*")
    if not summary["compliant"]:
        print(f"pgolf: the run is NON-COMPLIANT ({'; '.join(summary['compliance_failures'])}); see its compliance.json",
              file=sys.stderr)
        return 1
    return 0


@dataclass
class FinewebArgs:
    """Download the challenge's tokenized FineWeb shards and tokenizer (needs `pip install 'pgolf[fineweb]'`)."""

    variant: str = "sp1024"
    """Tokenizer variant: sp1024 (official) or a mirror's sp4096/sp8192/byte260."""
    train_shards: int = 80
    """Number of 100M-token training shards to fetch (80 = 8B tokens)."""
    root: str = "data"
    """Local data root; shards go to ROOT/datasets/fineweb10B_VARIANT."""
    repo_id: str | None = None
    """Hugging Face dataset repo (default $MATCHED_FINEWEB_REPO_ID, else willdepueoai/parameter-golf for sp1024
    and the kevclark/parameter-golf mirror for sp4096/sp8192)."""
    skip_manifest: bool = False
    """Do not fetch manifest.json (use the shard counts given)."""
    with_docs: bool = False
    """Also fetch the raw documents (docs_selected.jsonl)."""


def cmd_data(args: list[str]) -> int:
    """`pgolf data fineweb ...`."""
    from pgolf.data.fineweb import download_fineweb

    if not args or args[0] != "fineweb":
        raise UserError("usage: pgolf data fineweb --variant sp1024 --train-shards N")
    if wants_help(args):
        print("usage: pgolf data fineweb [flags]\n\n" + (FinewebArgs.__doc__ or "") + "\n")
        from pgolf.helptext import flag_lines

        print("\n".join(flag_lines(FinewebArgs(), "--", dashes=True)))
        return 0
    fa = parse_flat_args(FinewebArgs(), args[1:])
    paths = download_fineweb(variant=fa.variant, train_shards=fa.train_shards, root=fa.root, repo_id=fa.repo_id,
                             skip_manifest=fa.skip_manifest, with_docs=fa.with_docs)
    print(f"{len(paths)} files ready under {fa.root}")
    return 0


def parse_flat_args(obj: Any, args: list[str]) -> Any:
    """`--name VALUE` flags (dashes or underscores) onto a flat dataclass instance."""
    from pgolf.flags import field_types, parse_text

    types = field_types(type(obj))
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag, eq, text = args[i].partition("=")
        name = flag[2:].replace("-", "_")
        if not flag.startswith("--") or name not in types:
            raise UserError(f"unknown flag {flag}; choose from " + ", ".join("--" + n.replace("_", "-") for n in types))
        if not eq:
            if i + 1 >= len(args):
                raise UserError(f"{flag} needs a value")
            text, i = args[i + 1], i + 1
        tp = types[name]
        values[name] = None if text == "None" and "None" in str(tp) else parse_text(text, _plain(tp), flag)
        i += 1
    return dataclasses.replace(obj, **values)


def _plain(tp: Any) -> Any:
    """`str | None` -> str: optional flat fields take their base type from the command line."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) and args else tp


def cmd_presets(args: list[str]) -> int:
    """List the presets with their model size and budget."""
    for name, fn in PRESETS.items():
        c = fn()
        print(f"{name:16s} {c.model.num_layers}x{c.model.model_dim} vocab {c.model.vocab_size} | "
              f"{c.budget.artifact_max_bytes:,} bytes | {c.train.max_wallclock_seconds:.0f} s | data {c.data.source}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "run": cmd_run, "data": cmd_data,
            "presets": cmd_presets}


def main(argv: list[str] | None = None) -> int:
    """Entry point: dispatch the verb; user mistakes print one line and exit with code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    verb, rest = args[0], args[1:]
    if verb not in COMMANDS:
        print(f"pgolf: error: unknown command {verb!r}; {USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[verb](rest)
    except (UserError, ConfigError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
