"""Download the challenge's tokenized FineWeb shards and tokenizer from the Hugging Face Hub.

Manifest-driven like openai/parameter-golf `data/cached_challenge_fineweb.py`: `<prefix>/manifest.json`
lists `datasets` (`name` = `fineweb10B_<variant>`, `tokenizer_name`, `stats.files_train/files_val`)
and `tokenizers` (`name`, then `model_path` / `vocab_path` / `path` relative to the prefix). Files
land in the challenge's local layout, so the challenge's own commands find them too:

    ROOT/manifest.json
    ROOT/datasets/fineweb10B_sp1024/fineweb_{val,train}_{i:06d}.bin
    ROOT/tokenizers/fineweb_1024_bpe.{model,vocab}

Only `fineweb10B_sp1024` is on the official repo; sp4096 and sp8192 default to the mirror the later
records used (kevclark/parameter-golf), and any mirror is reached through `repo_id` /
`$MATCHED_FINEWEB_REPO_ID` and `$MATCHED_FINEWEB_REMOTE_ROOT_PREFIX`. Files already in
place are kept (shards only if their header and size check out); new ones are hard-linked (or
copied) from the Hub cache under a temporary name and renamed, so an interrupted download never
leaves a half file under a shard's name. `huggingface_hub` is imported only when needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from pgolf.data.shards import read_shard_header, shard_name
from pgolf.errors import UserError

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
# The official repo holds only sp1024; later records fetch the larger vocabularies from this mirror.
VARIANT_MIRRORS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf"}
DEFAULT_REMOTE_PREFIX = "datasets"
REPO_TYPE = "dataset"
REPO_ID_ENV = "MATCHED_FINEWEB_REPO_ID"
REMOTE_PREFIX_ENV = "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
MANIFEST_NAME = "manifest.json"
DOCS_FILES = ("docs_selected.jsonl", "docs_selected.source_manifest.json")
_INSTALL_HINT = "huggingface_hub is not installed; pip install 'pgolf[fineweb]'"
_NETWORK_MODULES = {"huggingface_hub", "requests", "httpx", "urllib3"}

HubDownload = Callable[..., str]


def dataset_dir_for_variant(variant: str) -> str:
    """`sp1024` -> `fineweb10B_sp1024`; a UserError for anything but `sp<N>` or `byte260`."""
    if variant != "byte260" and not re.fullmatch(r"sp\d+", variant):
        raise UserError(f"--variant {variant!r} is not a challenge variant; expected sp<VOCAB_SIZE> "
                        f"(e.g. sp1024) or byte260")
    return f"fineweb10B_{variant}"


def default_repo_id(variant: str) -> str:
    """Where a variant lives when no repo is named: the official repo, or the mirror records used."""
    return VARIANT_MIRRORS.get(variant, DEFAULT_REPO_ID)


def _remote(prefix: str, *parts: str) -> str:
    """Join Hub path parts, dropping an empty prefix (mirrors keep files at the repo root)."""
    return "/".join(p.strip("/") for p in (prefix, *parts) if p.strip("/"))


def _default_tokenizer_files(variant: str) -> list[str]:
    """The challenge's tokenizer file names, used when there is no manifest to read them from."""
    if variant == "byte260":
        return ["tokenizers/fineweb_pure_byte_260.json"]
    vocab = variant[2:]
    return [f"tokenizers/fineweb_{vocab}_bpe.model", f"tokenizers/fineweb_{vocab}_bpe.vocab"]


def _dataset_entry(manifest: dict[str, Any], variant: str) -> dict[str, Any]:
    """The manifest's entry for a variant, or a UserError listing the variants it has."""
    name = dataset_dir_for_variant(variant)
    entries = manifest.get("datasets") or []
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        have = sorted(str(e.get("name", "")).removeprefix("fineweb10B_") for e in entries)
        raise UserError(f"--variant {variant} is not in the data manifest, which lists: {', '.join(have) or 'none'}; "
                        f"pick one of those or pass --repo-id of a mirror that has {variant}")
    return entry


def _tokenizer_files(manifest: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """The tokenizer artifacts a dataset entry points at (`model_path`, `vocab_path`, `path`)."""
    name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers") or [] if t.get("name") == name), None)
    files = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok and tok.get(k)]
    if not files:
        raise UserError(f"the data manifest names tokenizer {name!r} for {entry.get('name')} but lists no files "
                        f"for it; delete manifest.json under the data root and retry")
    return files


def _checked_relative(rel: str) -> str:
    """A manifest path that stays inside the data root (a remote file decides these names)."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise UserError(f"the data manifest lists the unsafe path {rel!r}; delete manifest.json under the data "
                        f"root and retry")
    return rel


def plan_download(manifest: dict[str, Any] | None, variant: str, train_shards: int, *, remote_prefix: str,
                  with_docs: bool) -> list[tuple[str, str]]:
    """(remote path, local path relative to the data root) for every file of a download.

    With no manifest the challenge's conventions stand in: one validation shard, the named tokenizer
    files, and `train_shards` taken as given.
    """
    dataset = dataset_dir_for_variant(variant)
    if train_shards < 0:
        raise UserError(f"--train-shards {train_shards} must be >= 0")
    if manifest is None:
        num_val, tokenizer_files = 1, _default_tokenizer_files(variant)
    else:
        entry = _dataset_entry(manifest, variant)
        stats = entry.get("stats") or {}
        max_train, num_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
        if train_shards > max_train:
            raise UserError(f"--train-shards {train_shards} is more than the {max_train} training shards of "
                            f"{variant} in the data manifest; use --train-shards {max_train} or fewer")
        tokenizer_files = _tokenizer_files(manifest, entry)
    shards = [f"datasets/{dataset}/{shard_name('val', i)}" for i in range(num_val)]
    shards += [f"datasets/{dataset}/{shard_name('train', i)}" for i in range(train_shards)]
    docs = list(DOCS_FILES) if with_docs else []
    return [(_remote(remote_prefix, rel), _checked_relative(rel)) for rel in tokenizer_files + shards + docs]


def _hf_hub_download(**kwargs: Any) -> str:
    """`huggingface_hub.hf_hub_download`, imported only when a download happens."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError(_INSTALL_HINT) from None
    return hf_hub_download(**kwargs)


def _is_network_error(exc: Exception) -> bool:
    """Errors of the transfer itself (HTTP, connection, missing remote file), as opposed to our bugs."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _NETWORK_MODULES


def _is_shard(path: Path) -> bool:
    return path.name.startswith("fineweb_") and path.suffix == ".bin"


def _is_complete(path: Path) -> bool:
    """Whether a local file can be kept: shards must pass the header and size check, others be non-empty."""
    if not path.is_file():
        return False
    if not _is_shard(path):
        return path.stat().st_size > 0
    try:
        read_shard_header(path)
    except UserError:
        return False
    return True


def _fetch(hub_download: HubDownload, repo_id: str, remote: str, dest: Path) -> None:
    """Download one file through the Hub cache and move it into place atomically."""
    folder, _, name = remote.rpartition("/")
    try:
        cached = hub_download(repo_id=repo_id, filename=name, subfolder=folder or None, repo_type=REPO_TYPE)
    except UserError:
        raise
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"could not download {remote} from {repo_id} ({type(exc).__name__}: {detail}); "
                        f"check the network, --repo-id and that the file exists") from None
    # Hub cache entries can be symlinks into a blob store: link the blob itself, not the symlink.
    source = Path(cached).resolve(strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        if _is_shard(dest):
            try:
                read_shard_header(tmp)
            except UserError as exc:
                raise UserError(f"downloaded {remote} from {repo_id} is not a valid shard ({exc})") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable JSON manifest ({exc}); delete it and retry") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a data manifest (expected a JSON object); delete it and retry")
    return manifest


def _covers(manifest: dict[str, Any], variant: str, train_shards: int) -> bool:
    """Whether a local manifest already describes the request (else it may be stale: fetch it again)."""
    name = dataset_dir_for_variant(variant)
    entry = next((e for e in manifest.get("datasets") or [] if e.get("name") == name), None)
    return entry is not None and int((entry.get("stats") or {}).get("files_train", 0)) >= train_shards


def _load_manifest(root: Path, variant: str, train_shards: int, *, repo_id: str, remote_prefix: str,
                   skip_manifest: bool, hub_download: HubDownload) -> dict[str, Any] | None:
    """The local manifest if it covers the request, else a fresh one; None if skipped and absent."""
    local = root / MANIFEST_NAME
    manifest = _read_manifest(local) if local.is_file() else None
    if skip_manifest or (manifest is not None and _covers(manifest, variant, train_shards)):
        return manifest
    _fetch(hub_download, repo_id, _remote(remote_prefix, MANIFEST_NAME), local)
    return _read_manifest(local)


def download_fineweb(variant: str = "sp1024", train_shards: int = 80, root: str | os.PathLike[str] = "data",
                     repo_id: str | None = None, remote_prefix: str | None = None, skip_manifest: bool = False,
                     with_docs: bool = False, hub_download: HubDownload | None = None,
                     progress: bool = True) -> list[Path]:
    """Fetch the validation shards, `train_shards` training shards and the tokenizer of `variant`.

    Returns the local paths of every file of the download (those already present included).
    `skip_manifest` uses a local `ROOT/manifest.json` if there is one and the challenge's conventions
    otherwise. `hub_download` replaces `huggingface_hub.hf_hub_download` (tests, other transports).
    """
    dataset_dir_for_variant(variant)  # reject a malformed variant before any network access
    repo_id = repo_id or os.environ.get(REPO_ID_ENV) or default_repo_id(variant)
    prefix = remote_prefix if remote_prefix is not None else os.environ.get(REMOTE_PREFIX_ENV, DEFAULT_REMOTE_PREFIX)
    fetch = hub_download or _hf_hub_download
    root = Path(root)
    manifest = _load_manifest(root, variant, train_shards, repo_id=repo_id, remote_prefix=prefix,
                              skip_manifest=skip_manifest, hub_download=fetch)
    plan = [(remote, root / rel) for remote, rel in plan_download(manifest, variant, train_shards,
                                                                  remote_prefix=prefix, with_docs=with_docs)]
    todo = [(remote, dest) for remote, dest in plan if not _is_complete(dest)]
    if progress:
        print(f"fineweb {variant}: {len(plan) - len(todo)} of {len(plan)} files already in {root}, "
              f"fetching {len(todo)} from {repo_id}")
    with tqdm(total=len(todo), unit="file", desc=f"fineweb {variant}", disable=not progress) as bar:
        for remote, dest in todo:
            _fetch(fetch, repo_id, remote, dest)
            bar.update(1)
    return [dest for _, dest in plan]
