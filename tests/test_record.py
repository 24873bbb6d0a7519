"""Record folders: export-record writes the challenge's layout from finished runs, verify passes a clean
record and names the check a tampered one fails; the log facts verify relies on are read from the
lines pgolf writes. The slow test runs the whole path for real: two test-tiny seeds, export, verify
with a replay, and the shipped train_gpt.py run on its own in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_runs import code_line, fake_run, tiny_config
from pgolf.cli import main
from pgolf.logscan import Printed, scan_log
from pgolf.record import SUBMISSION_KEYS, compliance_status
from pgolf.verify import env_without_package

SCORES = {1337: (1.2345678, 2.0), 42: (1.2445678, 2.02)}


def export(runs: list[Path], out: Path) -> None:
    rc = main(["export-record", *map(str, runs), "--out", str(out), "--author", "Ada", "--github-id", "ada",
               "--blurb", "two tiny seeds"])
    assert rc == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    line = code_line(tiny_config(1337))  # the bundle the record will ship (built from the first run's config)
    return [fake_run(root / f"seed{s}", tiny_config(s), val_bpb=bpb, val_loss=loss, code=line,
                     model_bytes=40_000 + s) for s, (bpb, loss) in SCORES.items()]


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory, runs: list[Path]) -> Path:
    out = tmp_path_factory.mktemp("records") / "track_cpu" / "2026-05-01_Tiny"
    export(runs, out)
    return out


def verify_lines(record: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, str]]:
    capsys.readouterr()
    rc = main(["verify", str(record), *extra])
    lines = capsys.readouterr().out.splitlines()[:-1]
    return rc, {ln.split(":", 1)[0].split(" ", 1)[1]: ln for ln in lines}


def test_export_writes_the_challenge_layout(record: Path, runs: list[Path]) -> None:
    names = sorted(p.name for p in record.iterdir())
    assert names == ["README.md", "requirements.txt", "submission.json", "train_gpt.py", "train_seed1337.log",
                     "train_seed42.log"]
    sub = json.loads((record / "submission.json").read_text())
    assert all(k in sub for k in SUBMISSION_KEYS)
    assert sub["date"] == "2026-05-01" and sub["track"] == "cpu" and sub["seeds"] == [1337, 42]
    code = (record / "train_gpt.py").stat().st_size
    assert sub["bytes_code"] == code
    for seed, (bpb, loss) in SCORES.items():
        r = sub["seed_results"][str(seed)]
        assert r["val_bpb"] == bpb and r["val_loss"] == loss and r["artifact_bytes"] == 40_000 + seed + code
    assert sub["bytes_total"] == 40_000 + 1337 + code
    assert sub["val_bpb"] == pytest.approx(1.2395678) and sub["val_bpb_std"] == pytest.approx(0.01 / 2**0.5)
    assert (record / "train_seed42.log").read_bytes() == (runs[1] / "log.txt").read_bytes()
    req = (record / "requirements.txt").read_text().splitlines()
    assert any(ln.startswith("torch==") and "+" not in ln for ln in req)
    assert {ln.split("==")[0] for ln in req} >= {"numpy", "sentencepiece", "safetensors"}
    readme = (record / "README.md").read_text()
    assert "| 1337 | 2.000000 | 1.234568 |" in readme and "`model.num_layers` = 2 (default 9)" in readme
    assert "No compliance report" in readme and "--nproc_per_node=1 train_gpt.py" in readme


def test_verify_passes_a_clean_record(record: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = verify_lines(record, capsys)
    assert rc == 0, "\n".join(lines.values())
    for name in ("files", "keys", "scores", "bytes", "code hash", "experiment hash", "data fingerprint",
                 "bundle loads"):
        assert lines[name].startswith("PASS"), lines[name]
    assert lines["compliance"].startswith("SKIP") and lines["replay"].startswith("SKIP")


def tampered(record: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(record, copy)
    return copy


def test_verify_names_what_was_tampered_with(record: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tampered(record, tmp_path)
    with open(copy / "train_gpt.py", "a") as f:
        f.write("# one more line\n")
    sub = json.loads((copy / "submission.json").read_text())
    sub["seed_results"]["42"]["val_bpb"] = 1.2
    (copy / "submission.json").write_text(json.dumps(sub))
    log = copy / "train_seed1337.log"
    log.write_text(log.read_text().replace("val_tokens 500", "val_tokens 501"))
    rc, lines = verify_lines(copy, capsys)
    assert rc == 2
    assert lines["bytes"].startswith("FAIL") and "size of train_gpt.py" in lines["bytes"]
    assert lines["code hash"].startswith("FAIL") and "train_seed42.log ran code" in lines["code hash"]
    assert lines["scores"].startswith("FAIL") and "train_seed42.log says val_bpb 1.244568" in lines["scores"]
    assert lines["data fingerprint"].startswith("FAIL") and "train_seed1337.log differs in val_tokens" in lines[
        "data fingerprint"]
    assert lines["experiment hash"].startswith("PASS") and lines["files"].startswith("PASS")


def test_export_refuses_existing_folders_and_mixed_runs(record: Path, runs: list[Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    before = sorted(p.name for p in record.iterdir())
    assert main(["export-record", str(runs[0]), "--out", str(record), "--author", "a", "--github-id", "a"]) == 2
    assert "already exists" in capsys.readouterr().err and sorted(p.name for p in record.iterdir()) == before
    other = fake_run(tmp_path / "other", tiny_config(7, iterations=3), val_bpb=1.0, val_loss=2.0)
    assert main(["export-record", str(runs[0]), str(other), "--out", str(tmp_path / "r2"), "--author", "a",
                 "--github-id", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not seeds of one experiment" in err[0] and "other" in err[0]
    assert not (tmp_path / "r2").exists() and not list(tmp_path.glob(".r2.*"))
    assert main(["export-record", str(runs[0]), "--out", str(tmp_path / "r3"), "--github-id", "a"]) == 2
    assert "--author" in capsys.readouterr().err


def test_compliance_reports_and_missing_code_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # runs whose logs do not start with the code line, one of them with a failed compliance check
    runs = [fake_run(tmp_path / f"s{s}", tiny_config(s), val_bpb=1.0 + s / 100, val_loss=2.0) for s in (1, 2)]
    (runs[0] / "compliance.json").write_text(json.dumps({"checks": [{"name": "eval_under_600s", "ok": True}]}))
    (runs[1] / "compliance.json").write_text(json.dumps({"checks": [{"name": "score_first_ttt", "ok": False}]}))
    export(runs, tmp_path / "rec")
    sub = json.loads((tmp_path / "rec/submission.json").read_text())
    assert sub["compliance"] == {"1": {"clean": True, "failed": []}, "2": {"clean": False,
                                                                          "failed": ["score_first_ttt"]}}
    assert "seed 2: NOT clean (failed: score_first_ttt)" in (tmp_path / "rec/README.md").read_text()
    rc, lines = verify_lines(tmp_path / "rec", capsys)
    assert rc == 2 and lines["compliance"].startswith("FAIL") and "score_first_ttt" in lines["compliance"]
    assert lines["code hash"].startswith("FAIL")
    assert "train_seed1.log has no 'code_sha256 <hex> bytes <n>' line" in lines["code hash"]
    assert lines["scores"].startswith("PASS") and lines["bytes"].startswith("PASS")


def test_compliance_shapes() -> None:
    assert compliance_status({"clean": True}) == (True, [])
    assert compliance_status({"train_under_600s": True, "no_slot": False}) == (False, ["no_slot"])
    assert compliance_status({"checks": {"a": True, "b": True}}) == (True, [])
    assert compliance_status({"clean": False, "checks": []}) == (False, [])
    assert compliance_status({"version": 1}) == (None, [])


def test_log_facts_from_pgolf_and_challenge_lines() -> None:
    pgolf_log = "\n".join([
        "code_sha256 " + "a" * 64 + " bytes 31234",
        "pgolf 0.1.0 | config 0123456789ab | experiment ba9876543210 | seed 42 | world 1 | commit abc",
        "data dataset_dir /my data/x | tokenizer_sha256 00ff | train_shards 1",
        "artifact runs/x/final_model.int8.ptz: 169,601 bytes = code 104,154 + model 65,447",
        "val_bpb 3.409443  (roundtrip from final_model.int8.ptz; pre-quant 3.408752, gap +0.000691)",
        "val_loss 5.044385 nats/token | 19,968 tokens, 42,622 bytes | seq 64 stride 64",
    ])
    f = scan_log(pgolf_log)
    assert f.code_sha256 == "a" * 64 and f.code_bytes == 31234 and f.experiment_hash == "ba9876543210"
    assert f.data == {"dataset_dir": "/my data/x", "tokenizer_sha256": "00ff", "train_shards": "1"}
    assert f.model_bytes == 65447 and f.val_bpb == Printed(3.409443, 6) and f.val_loss == Printed(5.044385, 6)
    challenge = scan_log("Serialized model int8+zlib: 15815847 bytes\n"
                         "final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244\n"
                         "final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570\n"
                         "val_bpb 9.0  (roundtrip from elsewhere)\n")
    assert challenge.model_bytes == 15815847 and challenge.val_bpb == Printed(1.2243657, 8)
    assert challenge.code_sha256 is None and challenge.experiment_hash is None
    assert Printed(1.224366, 6).matches(1.2243657) and not Printed(1.224366, 6).matches(1.2243)


# ---------------------------------------------------------------- the whole path, for real

def pgolf(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgolf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.mark.slow
def test_two_seeds_to_a_verified_record_whose_script_reproduces_them(tmp_path: Path) -> None:
    data = ["--data.dataset_dir", str(tmp_path / "data/ds"), "--data.tokenizer_path", str(tmp_path / "data/t.model")]
    # no wall-clock warmdown, so the LR schedule (and the run) does not depend on the machine's speed
    seeds = pgolf("seeds", "--preset", "test-tiny", "--seeds", "1337,42", "--group", "g", "--out_dir",
                  str(tmp_path / "runs"), "--train.max_wallclock_seconds", "0", *data, cwd=tmp_path)
    assert seeds.returncode == 0, seeds.stderr[-3000:]
    group = tmp_path / "runs/g"
    assert json.loads((group / "seeds.json").read_text())["seeds"] == [1337, 42]

    rec = tmp_path / "records/track_cpu/2026-05-01_TinyTwoSeeds"
    exp = pgolf("export-record", str(group), "--out", str(rec), "--author", "Ada", "--github-id", "ada", cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr[-3000:]
    ver = pgolf("verify", str(rec), "--replay", str(group / "seed42"), "--replay", str(group / "seed1337"),
                cwd=tmp_path)
    assert ver.returncode == 0, ver.stdout[-3000:] + ver.stderr[-2000:]
    lines = {ln.split(":", 1)[0].split(" ", 1)[1]: ln for ln in ver.stdout.splitlines()[:-1]}
    assert lines["code hash"].startswith("PASS") and lines["bytes"].startswith("PASS"), ver.stdout
    assert lines["replay " + str(group / "seed42")].startswith("PASS")
    report = pgolf("report", str(group), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0 and (tmp_path / "report/tensors.png").is_file(), report.stderr[-2000:]

    # the shipped script, alone in a fresh folder, with the baseline's environment variables: same run again
    before = json.loads((group / "seed42/summary.json").read_text())
    play = tmp_path / "play"
    shutil.copytree(rec, play)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "train_gpt.py"], cwd=play, capture_output=True, text=True, timeout=900,
                         env={**env, "SEED": "42", "RUN_ID": "seed42", "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    shipped = play / "runs/seed42"
    # the same run step for step, the same score, the same artifact bytes, and the counted code is the script
    assert step_losses(shipped) == step_losses(group / "seed42") != []
    after = json.loads((shipped / "summary.json").read_text())
    assert after["val_bpb"] == before["val_bpb"] and after["val_loss"] == before["val_loss"]
    assert (shipped / "final_model.int8.ptz").read_bytes() == (group / "seed42/final_model.int8.ptz").read_bytes()
    assert after["code_bytes"] == before["code_bytes"] == (rec / "train_gpt.py").stat().st_size


def step_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "step"]


@pytest.mark.parametrize("verb, expected", [
    ("seeds", ("--seeds", "--group", "--model.num_layers")), ("compare", ("RUNS_A", "RUNS_B", "--policy", "frontier")),
    ("export-record", ("RUN_DIR", "--out", "--author", "--github-id", "--blurb", "--date")),
    ("verify", ("RECORD_DIR", "--replay", "--tolerance")), ("report", ("RUN_DIR", "--out")),
])
def test_every_new_verb_answers_help(verb: str, expected: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in expected), out


def test_verify_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "nope")]) == 2
    assert main(["verify"]) == 2
    assert main(["verify", str(tmp_path), "--tolerance", "x"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 3 and "nope" in err[0] and "RECORD_DIR" in err[1] and "--tolerance" in err[2]


def test_bundle_check_hides_only_the_package_from_pythonpath(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # dependencies installed with pip --target stay reachable; a folder holding pgolf does not
    deps, src = tmp_path / "site", tmp_path / "src"
    (deps / "brotli").mkdir(parents=True)
    (src / "pgolf").mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(src), str(deps), ""]))
    assert env_without_package("pgolf")["PYTHONPATH"] == str(deps)
    monkeypatch.setenv("PYTHONPATH", str(src))
    assert "PYTHONPATH" not in env_without_package("pgolf")
