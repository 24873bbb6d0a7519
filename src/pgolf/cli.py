"""The `pgolf` command: one verb per pipeline stage, typed flags from the config dataclasses.

    pgolf prepare  [--preset P] [--prepare.* --data.*]   embedded corpus -> tokenizer -> shards
    pgolf train    [--preset P] [overrides]              train and export the artifact (no final eval)
    pgolf train    --resume RUN_DIR                      continue a run from its checkpoint, then export
    pgolf eval ARTIFACT [--data.* --eval.* --ttt.*]      score an artifact (roundtrip), write compliance.json
    pgolf run      --preset P [overrides]                every stage, then a summary
    pgolf quantize RUN_DIR [--quant.*]                   re-export a run's weights with other quant settings, score
    pgolf bundle   --preset P [-o train_gpt.py]          the single-file script whose size is the counted code
    pgolf inspect  --preset P [overrides]                parameters, estimated bytes, step time, techniques
    pgolf seeds    --preset P --seeds 1337,42,2025       one run per seed, then mean, std and the table
    pgolf compare  A B                                   is B better than A? one-sided Welch t-test over seeds
    pgolf export-record RUN_DIR... --out FOLDER ...      a record folder in the challenge's layout
    pgolf verify   FOLDER                                check a record folder as a reviewer would
    pgolf report   RUN_DIR... [--out FOLDER]             plots and report.md
    pgolf data fineweb --variant sp1024 --train-shards N  download the challenge's data
    pgolf presets                                        list presets

Flags are `--section.field VALUE` (e.g. `--model.num_layers 11`), typed by the dataclasses in
`config.py` (`pgolf.flags`); `pgolf VERB --help` lists them with their defaults. User mistakes exit with code 2 and one line naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.cli_records import cmd_compare, cmd_export_record, cmd_report, cmd_seeds, cmd_verify
from pgolf.config import ConfigError, RunConfig
from pgolf.errors import UserError
from pgolf.presets import PRESETS, get_preset
from pgolf.verbargs import (DEFAULT_PRESET, config_from_args, parse_config, print_config_help, split_preset,
                            take_flag, wants_help)

USAGE = ("usage: pgolf {prepare,train,eval,run,bundle,inspect,data,presets} [--preset NAME] "
         "[--section.field VALUE ...]")


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


def split_resume(args: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--resume RUN_DIR` (or `--resume=RUN_DIR`) out of the argument list."""
    return take_flag(args, "--resume", "--resume needs the run folder: pgolf train --resume runs/NAME")


def resume_config(run_dir: str, args: list[str]) -> tuple[RunConfig, Path]:
    """The config to continue a run with: the checkpoint's own, or --preset/flags that must agree with it;
    returns it with the checkpoint's path. A changed setting is refused in one line."""
    from pgolf.checkpoint import CHECKPOINT_NAME, config_difference, read_checkpoint_meta
    from pgolf.config import config_to_dict, run_config_from_dict

    folder = Path(run_dir)
    path = folder / CHECKPOINT_NAME
    meta = read_checkpoint_meta(path)
    try:
        stored = run_config_from_dict(meta.get("config"))
    except (TypeError, ValueError) as exc:
        raise UserError(f"the config stored in {path} cannot be read ({exc}); it was written by another pgolf "
                        f"version") from None
    preset, rest = split_preset(args)
    cfg = parse_config(rest, get_preset(preset) if preset else stored, "pgolf train --resume")
    cfg.run_id, cfg.out_dir = folder.name, str(folder.parent)
    diff = config_difference(meta["config"], config_to_dict(cfg))
    if diff is not None:
        raise UserError(f"{folder} was trained with another setting ({diff}); a resumed run keeps its config: "
                        f"drop the flag, or start a new run with another --name")
    return cfg, path


def cmd_train(args: list[str]) -> int:
    """Train a preset (with overrides) and export its artifact, or continue a run (`--resume RUN_DIR`)."""
    resume_dir, args = split_resume(args)
    if wants_help(args):
        preset, _ = split_preset(args)
        print_config_help("usage: pgolf train --preset NAME [--section.field VALUE ...]\n"
                          "       pgolf train --resume RUN_DIR   (continue from RUN_DIR/checkpoint.safetensors with its "
                          "stored config;\n       checkpoints are written when --train.checkpoint_every_seconds > 0)",
                          get_preset(preset or DEFAULT_PRESET))
        return 0
    if resume_dir is not None:
        cfg, checkpoint = resume_config(resume_dir, args)
    else:
        cfg, checkpoint = config_from_args(args, "pgolf train"), None
    if cfg is None:
        return 0
    from pgolf import dist
    from pgolf.bundle import build_bundle
    from pgolf.main import check_out_dir, ensure_data
    from pgolf.pipeline import train_and_export
    from pgolf.prepare import prepare

    check_out_dir(cfg.out_dir)
    info = _init_dist()
    try:
        ensure_data(cfg, info, prepare)
        command = "pgolf train " + shlex.join((["--resume", resume_dir] if resume_dir else []) + args)
        train_and_export(cfg, info, command=command, code=build_bundle(cfg), resume_from=checkpoint)
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
    default = get_preset(preset) if preset else config_stored_in(read_artifact(path).run_config)
    cfg = parse_config(rest, default, "pgolf eval ARTIFACT")
    from pgolf.bundle import code_bytes

    train_seconds, stopped_by = _training_record(Path(path).parent)
    info = _init_dist()
    try:
        # The counted code of this evaluation: the bundle of the config it runs (its eval settings included).
        scored, report = evaluate_with_report(path, cfg, info, check_bytes=True, code_bytes=code_bytes(cfg),
                                              train_seconds=train_seconds, stopped_by=stopped_by)
    finally:
        dist.shutdown()
    if info.is_main:
        print(eval_line(scored.result, cfg, scored.info.total_bytes))
        print("\n".join(format_report(report)))
        print(f"compliance report: {Path(path).with_name(COMPLIANCE_NAME)}")
    return 0 if report["compliant"] else 1


def _training_record(run_dir: Path) -> tuple[float | None, str | None]:
    """(training seconds, how training stopped) from the run folder's summary.json beside an artifact, when there
    is one (the artifact itself records no timings, so equal training gives equal bytes)."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        seconds, stopped = summary["train_seconds"], summary["stopped_by"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and isinstance(stopped, str):
        return float(seconds), stopped
    return None, None


def config_stored_in(run_config: dict[str, Any]) -> RunConfig:
    """The run config an artifact was trained with, so `pgolf eval` reuses its data and eval geometry."""
    from pgolf.config import run_config_from_dict

    try:
        return run_config_from_dict(run_config)
    except (TypeError, ValueError) as exc:
        raise UserError(f"the artifact's stored run config cannot be read ({exc}); pass --preset NAME") from None


def cmd_run(args: list[str]) -> int:
    """Every stage for a preset: prepare (embedded data), train, export, roundtrip, evaluate, summary."""
    cfg = config_from_args(args, "pgolf run", require_preset=True)
    if cfg is None:
        return 0
    # torch loads only now: a mistyped flag or preset is answered at once
    from pgolf.bundle import build_bundle
    from pgolf.main import execute
    from pgolf.prepare import prepare

    return execute(cfg, "pgolf run " + shlex.join(args), code=build_bundle(cfg), prepare=prepare)


def run_dir_config(run_dir: Path, flags: list[str], budget: str | None = None) -> RunConfig:
    """The config stored in a run folder's header.json with `flags` (and a --budget value) applied on top."""
    import json

    from pgolf.flags import parse_text, run_config_from_dict

    header_path = run_dir / "header.json"
    try:
        stored = json.loads(header_path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{header_path} is missing or has no config; pass a run folder written by `pgolf train` or `pgolf run`") from None
    try:
        cfg = run_config_from_dict(stored, where=f"{header_path}: config")
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    cfg = parse_config(flags, cfg, "pgolf quantize RUN_DIR")
    if budget is not None:
        cfg.budget.artifact_max_bytes = parse_text(budget, int, "--budget")
        cfg.validate()
    return cfg


def cmd_quantize(args: list[str]) -> int:
    """Re-export a run's full-precision weights with other quant settings, show the bytes, score it."""
    usage = "usage: pgolf quantize RUN_DIR [--budget BYTES] [--out PATH] [--quant.* ...]"
    if wants_help(args):
        print_config_help(usage + "\n\nRe-exports RUN_DIR/final_model.safetensors (and RUN_DIR/sensitivity.json) under "
                          "the run's config with any flag overriding it,\nprints the per-tensor table, writes the "
                          "artifact (default RUN_DIR/final_model.requant.ptz), reloads it and scores it.",
                          get_preset(DEFAULT_PRESET))
        return 0
    if not args or args[0].startswith("-"):
        raise UserError(f"pgolf quantize needs the run folder first; {usage}")

    def pop(flag: str, items: list[str]) -> tuple[str | None, list[str]]:
        for i, a in enumerate(items):
            if a == flag or a.startswith(flag + "="):
                if a == flag and i + 1 >= len(items):
                    raise UserError(f"{flag} needs a value; {usage}")
                value = items[i + 1] if a == flag else a.split("=", 1)[1]
                return value, items[:i] + items[i + (2 if a == flag else 1):]
        return None, items

    run_dir = Path(args[0])
    budget, rest = pop("--budget", args[1:])
    out, rest = pop("--out", rest)
    cfg = run_dir_config(run_dir, rest, budget)
    from pgolf import dist
    from pgolf.bundle import code_bytes
    from pgolf.quant.export import format_report, requantize
    from pgolf.quant.fit import BudgetError
    from pgolf.runlog import write_json_atomic
    from pgolf.scoring import eval_artifact

    out_path = Path(out) if out else run_dir / "final_model.requant.ptz"
    info = _init_dist()
    try:
        try:
            result, rows = requantize(run_dir, cfg, out_path, code_bytes=code_bytes(cfg), device=info.device)
        except BudgetError as exc:
            for row in exc.table:
                print(f"{row['name']:40s} {row['kind']:11s} {row['bits']:2d} bits {row['compressed_bytes']:12,d} bytes")
            raise
        for line in format_report(rows, result):
            print(line)
        scored = eval_artifact(str(out_path), cfg, info)
        write_json_atomic(out_path.with_suffix(".json"), {"export": result.summary(), "tensors": rows, "score": scored})
    finally:
        dist.shutdown()
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


def cmd_bundle(args: list[str]) -> int:
    """Write the single-file train_gpt.py of a preset (with overrides baked in); its size is the counted code."""
    out, rest = "train_gpt.py", []
    i = 0
    while i < len(args):
        if args[i] in ("-o", "--out") and i + 1 < len(args):
            out, i = args[i + 1], i + 2
            continue
        rest.append(args[i])
        i += 1
    cfg = config_from_args(rest, "pgolf bundle [-o train_gpt.py]", require_preset=True)
    if cfg is None:
        return 0
    from pgolf.bundle import bundle_modules, write_bundle

    size = write_bundle(cfg, out)
    print(f"{out}: {size:,} bytes (counted code), {len(bundle_modules(cfg))} modules, preset {cfg.name} baked in; "
          f"run it as `python {Path(out).name}` or `torchrun --standalone --nproc_per_node=N {Path(out).name}`")
    return 0


INSPECT_USAGE = """usage: pgolf inspect --preset NAME [--steps N] [--compile] [--probe-seqs K] [--nproc N] [--json PATH]
                     [--section.field VALUE ...]

Before any training: parameters per role and optimiser group, the artifact's estimated bytes (code exact,
model from the export plan and bytes/param measured on Gaussian rows) against the budget, the step time on
this machine (N real optimiser steps on random tokens after one untimed warm-up; default 3, 0 skips the
timing) and the steps that fit the training budget, and every technique of the record the preset
reproduces with its state (on / off / CUDA only / not built / excluded).

  --compile        time the compiled model (default eager; the warm-up step absorbs the compilation)
  --probe-seqs K   sequences per timed micro-batch (default: up to 8,192 tokens); a larger micro-batch
                   is timed on K sequences and scaled linearly
  --nproc N        time one rank's share of the batch over N data-parallel ranks (communication not counted)
  --json PATH      also write the report as JSON"""


def _int_flag(value: str | None, flag: str, default: int, minimum: int) -> int:
    from pgolf.flags import parse_text

    if value is None:
        return default
    number = parse_text(value, int, flag)
    if number < minimum:
        raise UserError(f"{flag} must be >= {minimum}, got {number}")
    return number


def cmd_inspect(args: list[str]) -> int:
    """Parameters, estimated artifact bytes, step time and the record's techniques of a config, before training."""
    steps, rest = take_flag(args, "--steps")
    probe, rest = take_flag(rest, "--probe-seqs")
    nproc, rest = take_flag(rest, "--nproc")
    json_path, rest = take_flag(rest, "--json")
    compile_model = "--compile" in rest
    rest = [a for a in rest if a != "--compile"]
    preset, _ = split_preset(rest)
    if wants_help(rest):
        print_config_help(INSPECT_USAGE, get_preset(preset or DEFAULT_PRESET))
        return 0
    cfg = config_from_args(rest, "pgolf inspect", require_preset=True)
    assert cfg is not None and preset is not None
    from pgolf.inspect import format_report, inspect_config, report_json
    from pgolf.runlog import write_json_atomic

    report = inspect_config(preset, cfg, steps=_int_flag(steps, "--steps", 3, 0), compile_model=compile_model,
                            probe_seqs=_int_flag(probe, "--probe-seqs", 0, 1), nproc=_int_flag(nproc, "--nproc", 1, 1))
    print("\n".join(format_report(report)))
    if json_path:
        write_json_atomic(Path(json_path), report_json(report))
    return 0


def cmd_presets(args: list[str]) -> int:
    """List the presets with their model size and budget."""
    width = max(map(len, PRESETS))
    for name, fn in PRESETS.items():
        c = fn()
        shape = f"{c.model.num_layers}x{c.model.model_dim} vocab {c.model.vocab_size}"
        print(f"{name:{width}s}  {shape:18s} | {c.budget.artifact_max_bytes:>10,} bytes | "
              f"{c.train.max_wallclock_seconds:3.0f} s | data {c.data.source}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "run": cmd_run, "quantize": cmd_quantize,
            "bundle": cmd_bundle, "inspect": cmd_inspect, "data": cmd_data, "presets": cmd_presets, "seeds": cmd_seeds,
            "compare": cmd_compare, "export-record": cmd_export_record, "verify": cmd_verify, "report": cmd_report}


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
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = COMMANDS[verb](rest)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except (UserError, ConfigError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgolf: interrupted during `pgolf {verb}`; files already written are whole (nothing half-written "
              f"is left under a real name)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pgolf presets | head -1`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (torchrun, a scheduler, `kill`) is handled like Ctrl-C."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
