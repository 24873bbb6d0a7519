"""The verbs for experiments and records: `pgolf seeds` (one run per seed), `compare` (is B better than
A over seeds?), `export-record` (a record folder in the challenge's layout), `verify` (check one as a
reviewer would) and `report` (plots and report.md). `pgolf.cli` dispatches to them."""

from __future__ import annotations

import shlex
from pathlib import Path

from pgolf.errors import UserError
from pgolf.presets import get_preset
from pgolf.verbargs import DEFAULT_PRESET, config_from_args, print_config_help, split_preset, wants_help


def cmd_seeds(args: list[str]) -> int:
    """Run a preset once per seed (one after another; under torchrun every rank runs the same seeds), then
    print mean, std and the per-seed table and write seeds.json beside the runs."""
    from pgolf.prepare import prepare
    from pgolf.seeds import parse_seeds, run_seeds
    from pgolf.verbargs import take_flag

    usage = ("usage: pgolf seeds --preset NAME --seeds 1337,42,2025 [--group NAME] [--section.field VALUE ...]\n\n"
             "Each seed runs in its own folder OUT_DIR/GROUP/seedS (GROUP: NAME-seeds-DATE-TIME-RANDOM unless\n"
             "--group is given); OUT_DIR/GROUP/seeds.json holds the per-seed numbers, mean and std.")
    seeds_text, rest = take_flag(args, "--seeds")
    group, rest = take_flag(rest, "--group")
    if wants_help(rest):
        preset, _ = split_preset(rest)
        print_config_help(usage, get_preset(preset or DEFAULT_PRESET))
        return 0
    if seeds_text is None:
        raise UserError("pgolf seeds needs --seeds, e.g. --seeds 1337,42,2025")
    seeds = parse_seeds(seeds_text)
    if group is not None and (not group or "/" in group or group in (".", "..")):
        raise UserError(f"--group {group!r} must be a plain folder name")
    cfg = config_from_args(rest, "pgolf seeds", require_preset=True)
    assert cfg is not None
    run_seeds(cfg, seeds, "pgolf seeds " + shlex.join(args), group=group or "", prepare=prepare)
    return 0


def cmd_compare(args: list[str]) -> int:
    """Is B better than A? Welch's one-sided t-test over seeds on val_loss and val_bpb, and a verdict."""
    from pgolf.seeds import compare, save_json
    from pgolf.stats import POLICIES
    from pgolf.verbargs import VerbParser, parse_verb

    parser = VerbParser(prog="pgolf compare", description=cmd_compare.__doc__)
    for side, role in (("runs_a", "the incumbent"), ("runs_b", "the candidate")):
        parser.add_argument(side, metavar=side.upper(), help=f"{role}: a run folder, a folder of run folders, a glob, "
                                                               f"or several of these separated by commas")
    parser.add_argument("--policy", choices=list(POLICIES), default="readme",
                        help="; ".join(f"{p.name}: {p.rule}" for p in POLICIES.values()) + " (default: readme)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    ns = parse_verb(parser, args)
    if ns is None:
        return 0
    lines, result = compare(ns.runs_a, ns.runs_b, ns.policy)
    print("\n".join(lines))
    if ns.json:
        save_json(ns.json, result)
    return 0


def cmd_export_record(args: list[str]) -> int:
    """Write a record folder (README.md, submission.json, train_seed{S}.log, requirements.txt, train_gpt.py)
    from the finished runs of one experiment's seeds."""
    from pgolf.record import RecordMeta, default_date, export_record
    from pgolf.verbargs import VerbParser, parse_verb

    parser = VerbParser(prog="pgolf export-record", description=cmd_export_record.__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders, folders of run folders or globs (the seeds of one experiment)")
    parser.add_argument("--out", required=True, help="the record folder to create, e.g. "
                                                     "records/track_10min_16mb/2026-05-01_MyIdea (never overwritten)")
    parser.add_argument("--name", default="", help="the submission's name (default: the experiment name)")
    parser.add_argument("--author", required=True, help="your name")
    parser.add_argument("--github-id", required=True, help="your GitHub user name")
    parser.add_argument("--blurb", default="", help="one paragraph on what the submission does")
    parser.add_argument("--date", default="", help="YYYY-MM-DD (default: the date the --out folder's name starts "
                                                   "with, else today)")
    ns = parse_verb(parser, args)
    if ns is None:
        return 0
    from pgolf.runinfo import load_runs

    name = ns.name or load_runs(ns.runs[:1])[0].name
    out = export_record(ns.runs, ns.out, RecordMeta(name=name, author=ns.author, github_id=ns.github_id,
                                                    blurb=ns.blurb, date=ns.date or default_date(ns.out)))
    print(f"record folder {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    print(f"check it with `pgolf verify {out}`")
    return 0


def cmd_verify(args: list[str]) -> int:
    """Check a record folder as a reviewer would; one PASS/FAIL/SKIP line per check, exit 0 when none fails."""
    from pgolf.verbargs import VerbParser, parse_verb, split_config_flags
    from pgolf.verify import verify_record

    parser = VerbParser(prog="pgolf verify", description=cmd_verify.__doc__,
                         epilog="--section.field VALUE flags (e.g. --data.dataset_dir) override the artifact's stored "
                                "config for --replay.")
    parser.add_argument("record", metavar="RECORD_DIR")
    parser.add_argument("--replay", action="append", default=[], metavar="RUN_DIR_OR_ARTIFACT",
                        help="score this artifact (or run folder's artifact) again and compare with its seed's "
                             "val_bpb; repeatable")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |val_bpb difference| a replay may "
                                                                      "show (default: 1e-4)")
    overrides, rest = split_config_flags(args)
    ns = parse_verb(parser, rest)
    if ns is None:
        return 0
    checks = verify_record(ns.record, ns.replay, ns.tolerance, overrides)
    for c in checks:
        print(c.line())
    failed = sum(c.status == "FAIL" for c in checks)
    print(f"{'FAILED' if failed else 'VERIFIED'}: {len(checks) - failed} of {len(checks)} checks did not fail")
    return 2 if failed else 0


def cmd_report(args: list[str]) -> int:
    """PNG plots (loss against time and tokens, val_bpb, LR, per-tensor bits and bytes) and report.md for runs."""
    from pgolf.report import make_report
    from pgolf.verbargs import VerbParser, parse_verb

    parser = VerbParser(prog="pgolf report", description=cmd_report.__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, folders of run folders or globs")
    parser.add_argument("--out", default="", help="output folder (default: RUN_DIR/report when one folder is "
                                                  "given, else ./report)")
    ns = parse_verb(parser, args)
    if ns is None:
        return 0
    one_folder = len(ns.runs) == 1 and "," not in ns.runs[0] and Path(ns.runs[0]).is_dir()
    out = ns.out or (str(Path(ns.runs[0]) / "report") if one_folder else "report")
    print(f"report: {make_report(ns.runs, out)}")
    return 0
