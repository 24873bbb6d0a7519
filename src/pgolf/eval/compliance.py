"""The compliance report of a scored evaluation (`compliance.json` and a readable block).

It states, for each of the four conditions of parameter-golf issue #1017 (causal; a full normalised
distribution; score before update; a single left-to-right pass), how the code path guarantees it and
what was checked at run time: a probe of the model on random tokens (earlier logits do not move when
later tokens change; the scored nll is -log softmax over the whole vocabulary) and the ledger's
counters over all ranks. Then the time and byte ledger: evaluation seconds per stage against
budget.eval_seconds, training seconds against budget.train_seconds, and code + model bytes against
budget.artifact_max_bytes. Any failure makes the run non-compliant; nothing over a budget passes quietly.

Reporting only: nothing here is needed to score an artifact (it ships in a run's bundle, which writes
the report, but `pgolf.scoring` never imports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import RunConfig, config_to_dict
from pgolf.dist import DistInfo
from pgolf.fileio import write_bytes_atomic
from pgolf.eval.sliding import EvalResult
from pgolf.scoring import ArtifactScore, ValData, score_artifact

SCHEMA = "pgolf.compliance/1"
COMPLIANCE_NAME = "compliance.json"

GUARANTEES = {
    "causal": "each score is the causal model's prediction from tokens before the target, in windows the ledger "
              "builds (inputs end before the scored target; lora: only the document's own prefix); adaptation "
              "changes weights only from tokens already scored; the n-gram caches (eval.ngram_order) count only "
              "tokens before the target and are weighed by earlier positions' scores, as are the unadapted model's "
              "score mixed in by eval.mix_unadapted and a second LoRA pass's by ttt.lora_mix_lr",
    "normalized": "each score is the cross-entropy of a softmax over all vocabulary logits at that position; "
                  "nothing is keyed on the target; each n-gram cache is a distribution over the whole vocabulary "
                  "(exact counts backed off to uniform) and the score a mixture of them and the model",
    "score_before_update": "adapters get validation tokens only from the ledger's AdaptationView, which raises "
                           "LedgerError for any span holding an unscored prediction; the last chunk is never "
                           "adapted on; a document's chunk is learned from only after it is committed",
    "single_pass": "the ledger refuses a second score of any position, and at the end counts every prediction over "
                   "all ranks and refuses the result unless each was scored exactly once",
}


def probe_model(model: nn.Module, vocab_size: int, seq_len: int, device: torch.device,
                seed: int = 0) -> dict[str, Any]:
    """Causality and normalisation of the model on random tokens (never validation data)."""
    if not hasattr(model, "forward_logits"):
        return {"checked": False}
    g = torch.Generator().manual_seed(seed)
    T, cut = max(2, min(seq_len, 128)), max(1, min(seq_len, 128) // 2)
    x = torch.randint(0, vocab_size, (2, T), generator=g)  # (2, T)
    x2 = x.clone()
    x2[:, cut:] = torch.randint(0, vocab_size, (2, T - cut), generator=g)
    y = torch.randint(0, vocab_size, (2, T), generator=g)  # (2, T)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        a, b = (model.forward_logits(t.to(device)).float() for t in (x, x2))  # (2, T, V) each
        nll = model.per_token_nll(x.to(device), y.to(device)).float()  # (2, T)
    model.train(was_training)
    reference = -F.log_softmax(a, dim=-1).gather(-1, y.to(device)[..., None])[..., 0]  # (2, T)
    causal, later = float((a[:, :cut] - b[:, :cut]).abs().max()), float((a[:, cut:] - b[:, cut:]).abs().max())
    normalized = float((nll - reference).abs().max())
    return {"checked": True, "positions": T, "changed_from": cut, "logits": int(a.shape[-1]),
            "earlier_logits_max_abs_change": causal, "later_logits_max_abs_change": later,
            "nll_vs_log_softmax_max_abs_diff": normalized,
            "causal_ok": causal <= 1e-4, "normalized_ok": normalized <= 1e-3 and a.shape[-1] >= vocab_size}


def _conditions(mode: str, r: EvalResult, probe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    led = r.ledger
    pick = lambda *keys: {k: probe[k] for k in ("checked", *keys) if k in probe}  # noqa: E731
    out = {
        "causal": {"ok": probe.get("causal_ok", True) and probe.get("cache_causal_ok", True),
                   "checked": pick("positions", "changed_from", "earlier_logits_max_abs_change",
                                   "later_logits_max_abs_change", "cache_earlier_max_abs_change")},
        "normalized": {"ok": probe.get("normalized_ok", True) and probe.get("cache_normalized_ok", True),
                       "checked": pick("logits", "nll_vs_log_softmax_max_abs_diff", "cache_sum_max_abs_error",
                                       "cache_vs_direct_max_abs_diff")},
        # a refused release raises LedgerError and ends the evaluation, so a report exists only without one
        "score_before_update": {"ok": led is not None and (mode != "none" or led.num_adapted == 0),
                                "checked": {"adaptation": mode, "ngram_order": getattr(led, "ngram_order", 0),
                                            "unadapted_mixed": getattr(led, "unadapted", False),
                                            "second_lora_mixed": getattr(led, "lora_mixed", False),
                                            "releases": getattr(led, "num_releases", None),
                                            "predictions_adapted_on": getattr(led, "num_adapted", None)}},
        "single_pass": {"ok": led is not None and led.num_scored == led.num_positions == r.num_tokens,
                        "checked": {"predictions": getattr(led, "num_positions", None),
                                    "scored_exactly_once": getattr(led, "num_scored", None)}},
    }
    for name, entry in out.items():
        entry["guarantee"] = GUARANTEES[name]
    return out


def _failures(conditions: dict[str, Any], t: dict[str, Any], b: dict[str, Any]) -> list[str]:
    failures = [f"condition {k} failed" for k, v in conditions.items() if not v["ok"]]
    if not t["eval_ok"]:
        failures.append(f"evaluation took {t['eval_seconds']:.1f} s, over the {t['eval_budget_seconds']:.0f} s budget")
    if t["train_ok"] is False:
        failures.append(f"training took {t['train_seconds']:.1f} s, over the {t['train_budget_seconds']:.0f} s budget")
    if not b["ok"]:
        failures.append(f"{b['total_bytes']:,} bytes, over the {b['budget_bytes']:,} byte budget")
    return failures


def train_ledger(cfg: RunConfig, loop_seconds: float | None, stopped_by_cap: bool | None,
                 extra_seconds: float = 0.0) -> dict[str, Any]:
    """Training seconds (the loop's plus any charged after it, such as calibration) against
    budget.train_seconds. A loop stopped by its wall-clock cap (at most the budget), with nothing charged
    after it, is within the budget even though the step that crossed the cap ends past it: the loop checks
    the clock after each step and starts none once the cap is spent, as the challenge's baseline does.
    The overrun of that last step is reported."""
    budget, cap = cfg.budget.train_seconds, cfg.train.max_wallclock_seconds
    total = None if loop_seconds is None else loop_seconds + extra_seconds
    if total is None:
        ok = None
    else:
        ok = total <= budget or bool(stopped_by_cap and 0 < cap <= budget and extra_seconds == 0)
    return {"train_seconds": total, "train_loop_seconds": loop_seconds, "train_extra_seconds": extra_seconds,
            "train_budget_seconds": budget, "train_cap_seconds": cap, "train_stopped_by_cap": stopped_by_cap,
            "train_ok": ok, "train_overrun_seconds": None if total is None else max(0.0, total - budget)}


def build_report(cfg: RunConfig, scored: ArtifactScore, probe: dict[str, Any], world_size: int,
                 train_seconds: float | None, stopped_by_cap: bool | None = None,
                 extra_train_seconds: float = 0.0) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring; `compliant` sums it up)."""
    r, mode, budget = scored.result, cfg.eval.ttt, cfg.budget
    conditions = _conditions(mode, r, probe)
    eval_seconds = sum(v for k, v in scored.stages.items() if "." not in k)  # "stage.part" entries are inside one
    time_ledger = {"stages_seconds": scored.stages, "eval_seconds": eval_seconds,
                   "eval_budget_seconds": budget.eval_seconds, "eval_ok": eval_seconds <= budget.eval_seconds,
                   **train_ledger(cfg, train_seconds, stopped_by_cap, extra_train_seconds)}
    code_bytes = scored.info.code_bytes  # the single-file bundle of the evaluated config (TTT code included)
    total_bytes = code_bytes + scored.info.model_bytes
    byte_ledger = {"code_bytes": code_bytes, "model_bytes": scored.info.model_bytes,
                   "total_bytes": total_bytes, "budget_bytes": budget.artifact_max_bytes,
                   "ok": total_bytes <= budget.artifact_max_bytes}
    failures = _failures(conditions, time_ledger, byte_ledger)
    evaluation = {"ttt": mode, "seq_len": cfg.eval_seq_len, "stride": cfg.eval_stride, "world_size": world_size,
                  "val_bpb": r.bpb, "val_loss": r.loss, "tokens": r.num_tokens, "bytes": r.num_bytes,
                  "ttt_config": config_to_dict(cfg.ttt) if mode != "none" else None}
    return {"schema": SCHEMA, "compliant": not failures, "failures": failures,
            "artifact": {"path": str(scored.info.path), "sha256": scored.info.sha256}, "evaluation": evaluation,
            "conditions": conditions, "time": time_ledger, "bytes": byte_ledger}


def format_report(rep: dict[str, Any]) -> list[str]:
    """The readable block: verdict, the four conditions, then the time and byte ledger."""
    c, t, b = rep["conditions"], rep["time"], rep["bytes"]
    probe = {**c["causal"]["checked"], **c["normalized"]["checked"]}
    mark = {True: "ok", False: "FAIL", None: "n/a"}
    head = "COMPLIANT" if rep["compliant"] else "NON-COMPLIANT: " + "; ".join(rep["failures"])
    adapt = c["score_before_update"]["checked"]
    once = c["single_pass"]["checked"]
    lines = [f"compliance: {head}"]
    if probe.get("checked"):
        cache = "cache_sum_max_abs_error" in probe
        lines.append(f"  1 causal            {mark[c['causal']['ok']]:4s} earlier logits unchanged when later tokens "
                     f"change (max |diff| {probe['earlier_logits_max_abs_change']:.1e})"
                     + (f"; n-gram cache too ({probe['cache_earlier_max_abs_change']:.1e})" if cache else ""))
        lines.append(f"  2 full softmax      {mark[c['normalized']['ok']]:4s} nll = -log softmax over "
                     f"{probe['logits']:,} logits (max |diff| {probe['nll_vs_log_softmax_max_abs_diff']:.1e})"
                     + (f"; n-gram cache sums to 1 (max |1 - sum| {probe['cache_sum_max_abs_error']:.1e})"
                        if cache else ""))
    if adapt["adaptation"] == "none":
        released = f"{adapt['predictions_adapted_on']:,} predictions released"
        what = (f"no weight adaptation ({released})" if adapt.get("ngram_order")
                else f"no adaptation (fixed predictor; {released})")
    else:
        what = (f"{adapt['predictions_adapted_on']:,} predictions adapted on ({adapt['adaptation']}), each after its "
                f"score was committed ({adapt['releases']:,} releases)")
    mixed = [what for key, what in (("unadapted_mixed", "the unadapted model's scores"),
                                    ("second_lora_mixed", "a second LoRA pass's (score-first too)")) if adapt.get(key)]
    if mixed:
        what += f"; mixed with {' and '.join(mixed)} by weights learned from earlier positions"
    if adapt.get("ngram_order"):
        what += (f"; mixed with order-{adapt['ngram_order']} n-gram caches of the tokens before each target "
                 f"(eval-time adaptation, counted after scoring)")
    lines.append(f"  3 score before use  {mark[c['score_before_update']['ok']]:4s} {what}")
    lines.append(f"  4 single pass       {mark[c['single_pass']['ok']]:4s} {once['scored_exactly_once']:,} of "
                 f"{once['predictions']:,} predictions scored exactly once")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in t["stages_seconds"].items())
    train = "n/a" if t["train_seconds"] is None else f"{t['train_seconds']:.1f} s of {t['train_budget_seconds']:.0f} s"
    if t["train_ok"] and t["train_overrun_seconds"]:
        train += f" (stopped by the cap; the step crossing it ended {t['train_overrun_seconds']:.1f} s past)"
    lines.append(f"  time  eval {t['eval_seconds']:.1f} s of {t['eval_budget_seconds']:.0f} s ({stages}) "
                 f"{mark[t['eval_ok']]} | train {train} {mark[t['train_ok']]}")
    lines.append(f"  bytes {b['total_bytes']:,} of {b['budget_bytes']:,} = code {b['code_bytes']:,} "
                 f"+ model {b['model_bytes']:,} {mark[b['ok']]}")
    return lines


def write_report(path: str | Path, rep: dict[str, Any]) -> Path:
    """compliance.json, written atomically."""
    return write_bytes_atomic(path, (json.dumps(rep, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def evaluate_with_report(path: str | Path, cfg: RunConfig, info: DistInfo, *, val: ValData | None = None,
                         train_seconds: float | None = None, stopped_by: str | None = None,
                         extra_train_seconds: float = 0.0, report_path: str | Path | None = None,
                         check_bytes: bool = False, code_bytes: int | None = None) -> tuple[ArtifactScore, dict[str, Any]]:
    """Score the artifact as configured, probe the model, and write the report (rank 0) next to the artifact
    or at `report_path`. The training loop's seconds and how it stopped come from the caller, else from the
    artifact's record (fewer steps than train.iterations with the cap's seconds spent: stopped by the cap);
    `extra_train_seconds` is time charged to training after the loop (calibration)."""
    scored = score_artifact(path, cfg, info, val=val, progress=True, check_bytes=check_bytes, code_bytes=code_bytes)
    probe = probe_model(scored.model, scored.model.cfg.vocab_size, cfg.eval_seq_len, info.device)
    if cfg.eval.ngram_order:
        from pgolf.eval.ngram import probe_cache

        probe.update(probe_cache(cfg.eval.ngram_order, scored.model.cfg.vocab_size))
    if train_seconds is None:
        train_seconds, steps, cap = scored.train_seconds, scored.train_steps, cfg.train.max_wallclock_seconds
        if train_seconds is not None and steps is not None:
            stopped_by = "wallclock" if steps < cfg.train.iterations and 0 < cap <= train_seconds else "other"
    stopped_by_cap = None if stopped_by is None else stopped_by == "wallclock"
    rep = build_report(cfg, scored, probe, info.world_size, train_seconds, stopped_by_cap, extra_train_seconds)
    if info.is_main:
        write_report(report_path or Path(path).with_name(COMPLIANCE_NAME), rep)
    return scored, rep
