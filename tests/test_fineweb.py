"""The FineWeb downloader against a fake Hub: a local folder laid out like the challenge's dataset repo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pgolf.data.fineweb import download_fineweb, plan_download
from pgolf.data.shards import load_shard, read_shard_header, shard_name, write_shard
from pgolf.errors import UserError

REPO = "someone/parameter-golf"


def build_manifest(files_train: int = 3) -> dict[str, Any]:
    return {
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_train": files_train, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }


class FakeHub:
    """Serves files from `root/<repo_id>/...` the way hf_hub_download returns a cache path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []

    def __call__(self, *, repo_id: str, filename: str, subfolder: str | None, repo_type: str) -> str:
        assert repo_type == "dataset"
        remote = f"{subfolder}/{filename}" if subfolder else filename
        self.calls.append(remote)
        path = self.root / repo_id / remote
        if not path.is_file():
            raise FileNotFoundError(f"404 Client Error: {remote} not found")
        return str(path)


@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    base = tmp_path / "hub" / REPO / "datasets"
    base.mkdir(parents=True)
    (base / "manifest.json").write_text(json.dumps(build_manifest()))
    ds = base / "datasets" / "fineweb10B_sp1024"
    write_shard(ds / shard_name("val", 0), np.arange(7))
    for i in range(3):
        write_shard(ds / shard_name("train", i), np.full(5 + i, i))
    (base / "tokenizers").mkdir()
    (base / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"model")
    (base / "tokenizers" / "fineweb_1024_bpe.vocab").write_bytes(b"vocab")
    (base / "docs_selected.jsonl").write_text('{"text": "hi"}\n')
    (base / "docs_selected.source_manifest.json").write_text("{}")
    return FakeHub(tmp_path / "hub")


def test_downloads_to_challenge_layout(tmp_path: Path, hub: FakeHub) -> None:
    root = tmp_path / "data"
    paths = download_fineweb(train_shards=2, root=root, repo_id=REPO, hub_download=hub, progress=False)
    rel = sorted(str(p.relative_to(root)) for p in paths)
    assert rel == ["datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                   "datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
                   "datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
                   "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    assert (root / "manifest.json").is_file()
    assert not (root / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin").exists()
    assert load_shard(root / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin").tolist() == [1] * 6
    assert (root / "tokenizers/fineweb_1024_bpe.vocab").read_bytes() == b"vocab"
    assert "datasets/manifest.json" in hub.calls
    assert not list(root.rglob(".*part*"))  # no temporaries left behind


def test_skips_present_files_and_replaces_broken_ones(tmp_path: Path, hub: FakeHub) -> None:
    root = tmp_path / "data"
    download_fineweb(train_shards=1, root=root, repo_id=REPO, hub_download=hub, progress=False)
    shard = root / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin"
    truncated = shard.read_bytes()[:-2]
    shard.unlink()  # a new file, not the hard-linked cache blob
    shard.write_bytes(truncated)  # like an interrupted copy: must be fetched again
    hub.calls.clear()
    download_fineweb(train_shards=2, root=root, repo_id=REPO, hub_download=hub, progress=False)
    assert sorted(hub.calls) == ["datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                                 "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"]
    assert read_shard_header(shard) == 5


def test_with_docs_and_env_prefix(tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", REPO)
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")
    root = tmp_path / "data"
    paths = download_fineweb(train_shards=0, root=root, with_docs=True, hub_download=hub, progress=False)
    assert (root / "docs_selected.jsonl").read_text() == '{"text": "hi"}\n'
    assert root / "docs_selected.source_manifest.json" in paths
    assert not list((root / "datasets/fineweb10B_sp1024").glob("fineweb_train_*"))


def test_plan_respects_train_shards_and_prefix() -> None:
    plan = plan_download(build_manifest(80), "sp1024", 2, remote_prefix="", with_docs=False)
    assert plan[0] == ("tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.model")
    assert [local for _, local in plan if "train" in local] == [
        "datasets/fineweb10B_sp1024/fineweb_train_000000.bin", "datasets/fineweb10B_sp1024/fineweb_train_000001.bin"]
    no_manifest = plan_download(None, "sp4096", 1, remote_prefix="datasets", with_docs=False)
    assert [r for r, _ in no_manifest] == ["datasets/tokenizers/fineweb_4096_bpe.model",
                                           "datasets/tokenizers/fineweb_4096_bpe.vocab",
                                           "datasets/datasets/fineweb10B_sp4096/fineweb_val_000000.bin",
                                           "datasets/datasets/fineweb10B_sp4096/fineweb_train_000000.bin"]


def test_rejects_unknown_variant_and_too_many_shards(tmp_path: Path, hub: FakeHub) -> None:
    with pytest.raises(UserError, match="sp<VOCAB_SIZE>"):
        plan_download(build_manifest(), "gpt2", 1, remote_prefix="datasets", with_docs=False)
    with pytest.raises(UserError, match="lists: sp1024"):
        plan_download(build_manifest(), "sp8192", 1, remote_prefix="datasets", with_docs=False)
    with pytest.raises(UserError, match="use --train-shards 3 or fewer"):
        download_fineweb(train_shards=4, root=tmp_path / "data", repo_id=REPO, hub_download=hub, progress=False)
    assert not (tmp_path / "data" / "datasets").exists()
    with pytest.raises(UserError, match="lists: sp1024"):
        download_fineweb(variant="sp8192", train_shards=1, root=tmp_path / "data", repo_id=REPO,
                         hub_download=hub, progress=False)


def test_missing_remote_file_is_one_line_user_error(tmp_path: Path, hub: FakeHub) -> None:
    with pytest.raises(UserError) as info:
        download_fineweb(train_shards=1, root=tmp_path / "data", repo_id="nobody/nothing", hub_download=hub,
                         progress=False)
    message = str(info.value)
    assert "nobody/nothing" in message and "manifest.json" in message and "\n" not in message


def test_skip_manifest_uses_conventions(tmp_path: Path, hub: FakeHub) -> None:
    root = tmp_path / "data"
    download_fineweb(train_shards=1, root=root, repo_id=REPO, skip_manifest=True, hub_download=hub, progress=False)
    assert "datasets/manifest.json" not in hub.calls
    assert (root / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin").is_file()


def test_missing_huggingface_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import raise ImportError
    with pytest.raises(UserError, match=r"pip install 'pgolf\[fineweb\]'"):
        download_fineweb(train_shards=1, root=tmp_path / "data", progress=False)


def test_larger_vocabularies_default_to_the_mirror_records_used() -> None:
    from pgolf.data.fineweb import DEFAULT_REPO_ID, default_repo_id

    assert default_repo_id("sp1024") == DEFAULT_REPO_ID
    assert default_repo_id("sp4096") == default_repo_id("sp8192") == "kevclark/parameter-golf"
