"""Running a whole training run from a resolved config: the body of `pgolf run` and of a shipped
single-file `train_gpt.py` (see `pgolf.bundle`), which carries its preset baked in.

A bundle reads, in this order, its baked config, the challenge baseline's environment variables
(DATA_PATH, SEED, NUM_LAYERS, ... as openai/parameter-golf `train_gpt.py::Hyperparameters` names
them) and `--section.field VALUE` flags, so it is a drop-in replacement for the challenge's script:
`torchrun --standalone --nproc_per_node=8 train_gpt.py` inside a records folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from pgolf import dist
from pgolf.config import ConfigError, RunConfig
from pgolf.errors import UserError
from pgolf.flags import apply_overrides, flag_names, parse_text, run_config_from_changes

# The challenge baseline's environment variables and the fields they set.
ENV_FLAGS: dict[str, str] = {
    "DATA_PATH": "data.dataset_dir", "TOKENIZER_PATH": "data.tokenizer_path", "RUN_ID": "run_id",
    "SEED": "train.seed", "VAL_BATCH_SIZE": "eval.batch_tokens", "VAL_LOSS_EVERY": "train.val_loss_every",
    "TRAIN_LOG_EVERY": "train.train_log_every", "ITERATIONS": "train.iterations",
    "WARMDOWN_ITERS": "train.warmdown_iters", "WARMUP_STEPS": "train.warmup_steps",
    "TRAIN_BATCH_TOKENS": "train.train_batch_tokens", "TRAIN_SEQ_LEN": "train.train_seq_len",
    "MAX_WALLCLOCK_SECONDS": "train.max_wallclock_seconds", "QK_GAIN_INIT": "model.qk_gain_init",
    "VOCAB_SIZE": "model.vocab_size", "NUM_LAYERS": "model.num_layers", "NUM_KV_HEADS": "model.num_kv_heads",
    "MODEL_DIM": "model.model_dim", "NUM_HEADS": "model.num_heads", "MLP_MULT": "model.mlp_mult",
    "TIE_EMBEDDINGS": "model.tie_embeddings", "ROPE_BASE": "model.rope_base", "LOGIT_SOFTCAP": "model.logit_softcap",
    "EMBED_LR": "optim.embed_lr", "HEAD_LR": "optim.head_lr", "TIED_EMBED_LR": "optim.tied_embed_lr",
    "TIED_EMBED_INIT_STD": "model.tied_embed_init_std", "MATRIX_LR": "optim.matrix_lr",
    "SCALAR_LR": "optim.scalar_lr", "MUON_MOMENTUM": "optim.muon_momentum",
    "MUON_BACKEND_STEPS": "optim.muon_backend_steps", "MUON_MOMENTUM_WARMUP_START": "optim.muon_momentum_warmup_start",
    "MUON_MOMENTUM_WARMUP_STEPS": "optim.muon_momentum_warmup_steps", "BETA1": "optim.beta1", "BETA2": "optim.beta2",
    "ADAM_EPS": "optim.adam_eps", "GRAD_CLIP_NORM": "optim.grad_clip_norm",
}


# Modules imported lazily (inside functions) that only some configs use: module -> when a run needs it. A
# bundle ships the ones its baked config needs (`pgolf.bundle`); a flag that needs another is refused up front.
FEATURE_MODULES: dict[str, Callable[[RunConfig], bool]] = {
    "pgolf.eval.ttt": lambda cfg: cfg.eval.ttt == "chunked",
    "pgolf.eval.lora": lambda cfg: cfg.eval.ttt == "lora",
    "pgolf.eval.ngram": lambda cfg: cfg.eval.ngram_order > 0 or cfg.eval.mix_unadapted or cfg.ttt.lora_mix_lr > 0,
    "pgolf.quant.qat": lambda cfg: cfg.train.qat_threshold > 0,
    "pgolf.quant.gptq": lambda cfg: cfg.quant.gptq,
    "pgolf.quant.lqer": lambda cfg: cfg.quant.lqer_rank > 0,
    "pgolf.optim.averaging": lambda cfg: cfg.train.ema_decay > 0 or cfg.train.swa_every > 0,
    "pgolf.checkpoint": lambda cfg: cfg.train.checkpoint_every_seconds > 0,
    "pgolf.data.shuffled": lambda cfg: cfg.train.data_order == "shuffled",
}


def check_features(cfg: RunConfig, find: Callable[[str], object] = importlib.util.find_spec) -> None:
    """A one-line UserError when `cfg` needs a feature module this process cannot import: a shipped script
    run with a flag that switches on what it was built without (before any data is read or trained)."""
    missing = [name for name, needed in FEATURE_MODULES.items() if needed(cfg) and find(name) is None]
    if missing:
        raise UserError(f"this script was built without {', '.join(missing)}, which the given flags switch on; "
                        f"build one that has it: pgolf bundle --preset NAME -o train_gpt.py with the same flags")


def apply_env(cfg: RunConfig, environ: Mapping[str, str]) -> RunConfig:
    """The baseline's environment variables set on top of `cfg` (a bad value names the variable)."""
    table = flag_names(cfg)
    args: list[str] = []
    for var, field in ENV_FLAGS.items():
        if var in environ:
            flag = "--" + field
            try:
                parse_text(environ[var], table[flag][2], var)
            except ConfigError as exc:
                raise ConfigError(f"environment variable {exc}") from None
            args += [flag, environ[var]]
    return apply_overrides(cfg, args)


def ensure_data(cfg: RunConfig, info: dist.DistInfo, prepare: Callable[[RunConfig], object] | None) -> None:
    """Prepare the embedded corpus on rank 0 when a preparer is given (others wait), else check the
    shards are there; then check the tokenizer matches the model's vocabulary."""
    from pgolf.data.shards import MissingShardsError, list_shards
    from pgolf.tokenizer import load_tokenizer

    if cfg.data.source == "embedded" and prepare is not None:
        if info.is_main:
            prepare(cfg)
        dist.barrier()
    try:
        list_shards(cfg.dataset_dir, "train")
    except MissingShardsError:
        how = (f"`pgolf data fineweb --variant sp{cfg.model.vocab_size} --train-shards 80`" if cfg.data.source == "fineweb"
               else f"`pgolf prepare --model.vocab_size {cfg.model.vocab_size}`")
        raise UserError(f"no training shards in {cfg.dataset_dir}; create them with {how} "
                        f"or point DATA_PATH / --data.dataset_dir at them") from None
    load_tokenizer(cfg.tokenizer_path, cfg.model.vocab_size)


def check_out_dir(out_dir: str) -> None:
    """A one-line UserError unless `out_dir` is a folder this process can write in (or can create): probed
    with a temporary file before any data preparation or training, so a bad --out_dir fails at once."""
    existing = Path(out_dir)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent  # where the missing folders would be created
    if not existing.is_dir():
        raise UserError(f"--out_dir {out_dir}: {existing} is not a folder; point --out_dir at a writable folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".out_dir_check.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out_dir {out_dir}: cannot write in {existing} ({exc.strerror}); point --out_dir at a "
                        f"writable folder") from None


def execute(cfg: RunConfig, command: str, code: bytes, prepare: Callable[[RunConfig], object] | None = None, *,
            shutdown: bool = True) -> int:
    """Train, export, reload and score `cfg` in this process (one rank of torchrun, or alone); `code` is
    the counted code shipped with the artifact: the run's single-file bundle, byte for byte.

    `shutdown=False` keeps the process group for a caller that runs several configs in a row (`pgolf
    seeds`): joining a torchrun group again after leaving it hangs, so such a caller leaves it once."""
    from pgolf.pipeline import run

    check_out_dir(cfg.out_dir)
    info = dist.init()
    try:
        ensure_data(cfg, info, prepare)
        summary = run(cfg, info, command=command, code=code)
    finally:
        if shutdown:
            dist.shutdown()
    if not summary["within_byte_budget"]:
        raise UserError(f"artifact {summary['artifact']} is {summary['total_bytes']:,} bytes, over the "
                        f"{summary['artifact_max_bytes']:,} byte budget; shrink the model or change --quant.*")
    if not summary["compliant"]:
        print(f"the run is NON-COMPLIANT ({'; '.join(summary['compliance_failures'])}); see its compliance.json",
              file=sys.stderr)
        return 1
    return 0


def bundle_main(baked: str, argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    """Entry point of a shipped `train_gpt.py`: baked config, then environment, then flags."""
    prog = os.path.basename(sys.argv[0]) or "train_gpt.py"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if any(a in ("-h", "--help") for a in argv):
            print(f"usage: {prog} [--section.field VALUE ...]; environment variables: {', '.join(ENV_FLAGS)}")
            return 0
        cfg = run_config_from_changes(json.loads(baked))
        cfg = apply_overrides(apply_env(cfg, os.environ if environ is None else environ), argv)
        check_features(cfg)
        if not os.path.isfile(sys.argv[0]):
            raise UserError(f"cannot measure the counted code: {sys.argv[0]!r} is not a file; run the script by its path")
        with open(sys.argv[0], "rb") as f:
            shipped = f.read()
        return execute(cfg, f"{prog} {shlex.join(argv)}".strip(), code=shipped)
    except (UserError, ConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; files already written are whole", file=sys.stderr)
        return 130


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM is handled like Ctrl-C."""
    raise KeyboardInterrupt
