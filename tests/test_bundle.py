"""The counted code is the file that ships: a preset's single-file train_gpt.py runs where pgolf is not
importable, reproduces the package's own score and bytes for the same seed, and holds exactly the
modules the run imports."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.bundle import (build_bundle, bundle_modules, shipped_sources, stripped_source, unreferenced_defs,
                          without_defs)
from pgolf.flags import apply_overrides
from pgolf.presets import get_preset
from pgolf.verify import env_without_package

REPO = Path(__file__).resolve().parents[1]
SRC = str(REPO / "src")

# Runs a script with the pgolf package unreachable (its source folder off sys.path and no other copy
# importable), then records which pgolf modules the run imported.
HIDDEN = """
import importlib.util, json, os, runpy, sys
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "pgolf"))]
assert importlib.util.find_spec("pgolf") is None, "pgolf is still importable"
sys.argv = ["train_gpt.py"] + {args!r}
try:
    runpy.run_path("train_gpt.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
mods = sorted(m for m in sys.modules if m == "pgolf" or m.startswith("pgolf."))
origins = sorted({{getattr(sys.modules[m].__spec__, "origin", None) for m in mods}})
open({out}, "w").write(json.dumps({{"modules": mods, "origins": origins}}))
sys.exit(code)
"""
IMPORTED = '"imported.json"'


def pgolf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgolf", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_stripping_keeps_behaviour_and_drops_docs() -> None:
    text = stripped_source("pgolf.eval.bpb")
    assert '"""' not in text and "#" not in text.split("\n", 1)[1]
    namespace: dict = {}
    exec(compile(text, "bpb", "exec"), namespace)  # the stripped module still defines its functions
    assert namespace["bits_per_byte"](2.0 * 0.6931471805599453, 2.0) == pytest.approx(1.0)


def test_the_payload_literal_holds_every_byte_at_about_one_byte_each(tmp_path: Path) -> None:
    from pgolf.bundle import latin1_literal

    data = bytes(range(256)) * 4 + bytes(random.Random(0).getrandbits(8) for _ in range(20_000))
    literal = latin1_literal(data)
    assert len(literal) < 1.04 * len(data)  # base85 would be 1.25x
    script = tmp_path / "payload.py"
    script.write_bytes(b"# -*- coding: latin-1 -*-\nimport sys\nsys.stdout.buffer.write(" +
                      literal.encode("latin-1") + b".encode('latin-1'))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == data


def test_bundle_is_deterministic_and_follows_the_config() -> None:
    cfg = get_preset("test-tiny")
    assert build_bundle(cfg) == build_bundle(get_preset("test-tiny"))
    assert build_bundle(cfg) != build_bundle(apply_overrides(cfg, ["--model.num_layers", "3"]))
    # where a run goes is not baked in: the same config in another folder ships the same file
    assert build_bundle(cfg) == build_bundle(apply_overrides(cfg, ["--out_dir", "elsewhere", "--run_id", "x"]))
    # and every seed of an experiment ships the same script (the seed is given when it runs)
    assert build_bundle(cfg) == build_bundle(apply_overrides(cfg, ["--train.seed", "42"]))
    assert "pgolf.bundle" not in bundle_modules(cfg) and "pgolf.cli" not in bundle_modules(cfg)
    assert "pgolf.prepare" not in bundle_modules(cfg)


# 4 float32 steps of test-tiny (val loss every 2): fp32, so that 2 ranks reach the same losses as one process
FLAGS = ["--preset", "test-tiny", "--train.iterations", "4", "--train.val_loss_every", "2", "--train.warmup_steps", "0",
         "--train.dtype", "float32"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a folder where the package ran FLAGS as run seed1337, a folder holding only the data and the bundle of
    FLAGS as train_gpt.py)."""
    root = tmp_path_factory.mktemp("bundle")
    pkg = root / "pkg"
    pkg.mkdir()
    ran = pgolf("run", *FLAGS, "--run_id", "seed1337", cwd=pkg)
    assert ran.returncode == 0, ran.stderr[-3000:]
    folder = root / "shipped"
    folder.mkdir()
    (folder / "data").symlink_to(pkg / "data", target_is_directory=True)  # only the data, no source
    made = pgolf("bundle", *FLAGS, "-o", str(folder / "train_gpt.py"), cwd=pkg)
    assert made.returncode == 0, made.stderr[-3000:]
    return pkg, folder


def test_bundle_runs_without_pgolf_and_reproduces_the_package(shipped: tuple[Path, Path]) -> None:
    pkg, folder = shipped
    # PYTHONPATH keeps what else it holds (dependencies installed with pip --target); HIDDEN drops pgolf
    env = env_without_package("pgolf")
    proc = subprocess.run([sys.executable, "-c", HIDDEN.format(src=SRC, args=["--run_id", "seed1337"], out=IMPORTED)],
                          cwd=folder, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = json.loads((pkg / "runs/seed1337/summary.json").read_text())
    b = json.loads((folder / "runs/seed1337/summary.json").read_text())
    size = (folder / "train_gpt.py").stat().st_size
    assert b["code_bytes"] == size == a["code_bytes"]
    assert b["val_bpb"] == a["val_bpb"] and b["model_bytes"] == a["model_bytes"]
    assert (folder / "runs/seed1337/final_model.int8.ptz").read_bytes() == \
        (pkg / "runs/seed1337/final_model.int8.ptz").read_bytes()

    imported = json.loads((folder / "imported.json").read_text())
    cfg = apply_overrides(get_preset("test-tiny"), FLAGS[2:])
    assert imported["modules"] == bundle_modules(cfg)  # nothing shipped that the run did not import
    assert imported["origins"] == ["train_gpt.py"]  # and every module came from the bundle

    # a flag that switches on a module the script was built without: one line and exit 2, not a traceback
    proc = subprocess.run([sys.executable, "-c", HIDDEN.format(src=SRC, args=["--eval.ttt", "lora"], out=IMPORTED)],
                          cwd=folder, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "built without pgolf.eval.lora" in proc.stderr


def test_bundle_runs_under_torchrun_without_pgolf(shipped: tuple[Path, Path]) -> None:
    # `torchrun --nproc_per_node=2 train_gpt.py` (gloo): every rank loads the modules from the bundle and the
    # 2-process run trains as the package's 1-process run does (fp32; only the gradient sums' order differs)
    pkg, folder = shipped
    (folder / "hidden.py").write_text(HIDDEN.format(src=SRC, args=["--run_id", "two"],
                                                    out='f"imported{os.environ[\'RANK\']}.json"'))
    env = {**env_without_package("pgolf"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "hidden.py"], cwd=folder, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    a = json.loads((pkg / "runs/seed1337/summary.json").read_text())
    b = json.loads((folder / "runs/two/summary.json").read_text())
    assert b["code_bytes"] == (folder / "train_gpt.py").stat().st_size == a["code_bytes"]
    assert b["world_size"] == 2 and a["world_size"] == 1
    losses = [[json.loads(ln)["loss"] for ln in (root / "metrics.jsonl").read_text().splitlines()
               if json.loads(ln)["event"] == "step"] for root in (pkg / "runs/seed1337", folder / "runs/two")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
    assert losses[0][-1] < losses[0][0]  # it trained: not a comparison of two constant sequences
    assert b["val_bpb"] == pytest.approx(a["val_bpb"], abs=1e-3)
    for rank in (0, 1):
        imported = json.loads((folder / f"imported{rank}.json").read_text())
        assert imported["origins"] == ["train_gpt.py"], rank


def test_a_run_that_needs_a_missing_feature_module_is_refused_up_front() -> None:
    from pgolf.errors import UserError
    from pgolf.main import check_features

    cfg = apply_overrides(get_preset("test-tiny"), ["--eval.ttt", "lora", "--train.qat_threshold", "0.1"])
    with pytest.raises(UserError, match="built without pgolf.eval.lora, pgolf.quant.qat"):
        check_features(cfg, find=lambda name: None)
    check_features(cfg)  # the installed package has every module
    check_features(get_preset("test-tiny"), find=lambda name: None)  # and test-tiny needs none of them


@pytest.mark.parametrize("flags,module", [
    (["--quant.scheme", "intx", "--quant.gptq", "true"], "pgolf.quant.gptq"),
    (["--quant.scheme", "intx", "--quant.lqer_rank", "2"], "pgolf.quant.lqer"),
    (["--train.qat_threshold", "0.15"], "pgolf.quant.qat"),
    (["--eval.ttt", "chunked"], "pgolf.eval.ttt"),
    (["--eval.ttt", "lora"], "pgolf.eval.lora"),
    (["--eval.ngram_order", "3"], "pgolf.eval.ngram"),
    (["--eval.ttt", "lora", "--eval.mix_unadapted", "true"], "pgolf.eval.ngram"),  # where the mixing lives
    (["--eval.ttt", "lora", "--ttt.lora_mix_lr", "0.01"], "pgolf.eval.ngram"),
    (["--train.ema_decay", "0.997"], "pgolf.optim.averaging"),
    (["--train.swa_every", "50"], "pgolf.optim.averaging"),
    (["--train.checkpoint_every_seconds", "60"], "pgolf.checkpoint"),
    (["--train.data_order", "shuffled"], "pgolf.data.shuffled"),
])
def test_feature_modules_ship_exactly_when_switched_on(flags: list[str], module: str) -> None:
    from pgolf.main import FEATURE_MODULES

    cfg = get_preset("test-tiny")
    assert module in FEATURE_MODULES
    assert module not in bundle_modules(cfg)
    assert module in bundle_modules(apply_overrides(cfg, flags))


def test_a_module_edited_after_bundling_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # parsed modules are cached per process, keyed by the file's size and mtime: never a stale source
    import pgolf.bundle as bundle

    (tmp_path / "__init__.py").write_text("")
    mod = tmp_path / "m.py"
    mod.write_text('"""doc"""\nfrom pgolf import a\n\ndef f():\n    from pgolf import b\n    return 1\n')
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.setattr(bundle, "package_root", lambda: tmp_path)
    assert bundle.module_imports("pgolf.m") == ({"pgolf", "pgolf.a"}, {"pgolf.b"})
    assert bundle.stripped_source("pgolf.m") == "from pgolf import a\n\ndef f():\n    from pgolf import b\n    return 1\n"
    mod.write_text("from pgolf import c\n\nclass K:\n    def g(self):\n        def h():\n            import pgolf.a\n")
    assert bundle.module_imports("pgolf.m") == ({"pgolf", "pgolf.c"}, {"pgolf.a"})
    assert "import pgolf.a" in bundle.stripped_source("pgolf.m")


def test_definitions_nothing_reaches_are_left_out() -> None:
    sources = {"a": "def used():\n    return helper()\ndef helper():\n    pass\ndef unused():\n    return only_from_unused()\n",
               "b": "from a import used\ndef only_from_unused():\n    pass\nclass Named:\n    pass\nX = used()\nY = 'Named'\n"
                    "def __getattr__(name):\n    pass\n"}
    dead = unreferenced_defs(sources)
    assert {(m, n) for m, n, _ in dead} == {("a", "unused"), ("b", "only_from_unused")}
    kept = without_defs(sources, dead)
    assert "unused" not in kept["a"] and "def helper" in kept["a"] and "only_from_unused" not in kept["b"]
    assert "class Named" in kept["b"] and "def __getattr__" in kept["b"]  # named in a string; a module hook


def test_shipped_sources_drop_what_only_other_verbs_use() -> None:
    cfg = get_preset("test-tiny")
    shipped = shipped_sources(cfg)
    assert sorted(shipped) == bundle_modules(cfg)
    # `pgolf prepare` writes shards and `pgolf quantize` re-exports: neither ships with a run
    assert "def write_shard(" in stripped_source("pgolf.data.shards") and "def write_shard(" not in shipped["pgolf.data.shards"]
    assert "def requantize(" not in shipped["pgolf.quant.export"]
    assert "def read_shard_header(" in shipped["pgolf.data.shards"]
    assert not unreferenced_defs(shipped)  # nothing left to take off


_TRICKY = '''
import math as m
G = 10


def f(alpha, *rest, beta=2, **kw):
    total = alpha + beta + G
    items = [total * k for k in range(3)]
    pairs = {key: value for key, value in kw.items()}
    def inner(x):
        nonlocal total
        total += x
        return total
    def reads(y):
        return y + alpha + len(items)
    class Box:
        size = beta
        def get(self):
            return self.size + alpha
    try:
        raise ValueError(total)
    except ValueError as err:
        caught = err.args[0]
    squares = (lambda total_: total_ * total_)(alpha)
    out = []
    for index, item in enumerate(items):
        out.append(index * item)
    acc = 0
    while acc < 5:
        acc += 1
    del acc
    return (inner(1), reads(2), Box().get(), caught, squares, out, pairs, rest, m.floor(2.5), sorted(locals_free()))


def locals_free():
    mine = 3
    return [mine]


def introspects(a):
    hidden = a * 2
    return sorted(locals())


def shadows(n):
    max = n + 1
    return max, [max for _ in range(2)]
'''


def test_minified_renames_locals_without_changing_behaviour() -> None:
    from pgolf.bundle import minified

    def run(src: str) -> tuple:
        ns: dict = {}
        exec(compile(src, "m", "exec"), ns)
        return ns["f"](1, 7, 8, beta=3, c=4), ns["introspects"](5), ns["shadows"](4)

    small = minified(_TRICKY)
    assert run(small) == run(_TRICKY)
    assert "caught" not in small and "squares" not in small and "index" not in small  # locals renamed
    assert "total+=" in small and "mine" not in small  # ... except one a nested function declares nonlocal
    assert "def f(alpha,*rest,beta=2,**kw):" in small  # parameters keep their names (keyword calls)
    assert "nonlocal" in small and "hidden" in small  # a locals() caller keeps every name
    assert "\n    " not in small and "\n  nonlocal total" in small  # one space per level
    assert len(small) < len(_TRICKY)
    # a multi-line docstring (kept by a raw module, not by the bundle's stripping) keeps its indented lines
    doc = 'def g():\n    """first\n        second"""\n    return g.__doc__\n'
    ns: dict = {}
    exec(compile(minified(doc), "d", "exec"), ns)
    assert ns["g"]() == "first\n        second"


_SPACING = '''
import math as m
W = 1 if m.pi else 2
X = [1 .real, 0x1F or 2, 1e3, 2 ** -1, - -3, not 0, 5 in (5,), 'a' 'b', b'x', -1 < -2]
def g(a, b=2, *c, d, **e):
    t = f'{a!r:>6} {b:0.2f} {"q" + str(d)}' f"{{}} {a=}" + r'\\d' + """
    kept   as   is
"""
    return t if a else 'no', ..., (lambda *z, **k: (z, k))(a, q=-1), [x for x in c if x is not None]
class K(dict, metaclass=type):
    v: int = 3
    def __init__(self, **kw):
        super().__init__(**kw)
Y = (g(1, d=4), g(0, 3, 4, 5, d=None, z=1), K(a=1), X, W)
'''


def test_squeezed_keeps_every_token_and_drops_the_spaces_between() -> None:
    import ast

    from pgolf.bundle import squeezed

    small = squeezed(_SPACING)
    ran: list[dict] = [{}, {}]
    exec(compile(_SPACING, "a", "exec"), ran[0])
    exec(compile(small, "b", "exec"), ran[1])
    assert ran[1]["Y"] == ran[0]["Y"]
    assert ast.dump(ast.parse(small)) == ast.dump(ast.parse(_SPACING))
    assert "W=1 if m.pi else 2" in small and "1 .real" in small and "0x1F or 2" in small
    assert "def g(a,b=2,*c,d,**e):" in small and "\n t=f'{a!r:>6} {b:0.2f}" in small
    assert '"""\n    kept   as   is\n"""' in small  # a string's own text, newlines and spaces, as it was
    assert "\n\n" not in small and len(small) < 0.9 * len(_SPACING)


def test_shipped_sources_and_streams_are_cached_and_never_trusted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pgolf.bundle as bundle

    monkeypatch.setattr(bundle, "cache_dir", lambda: tmp_path)
    bundle._compress.cache_clear()  # what earlier tests left in memory
    cfg = get_preset("test-tiny")
    first, made = shipped_sources(cfg), build_bundle(cfg)
    files = {p.name.split(".")[1]: p for p in tmp_path.iterdir()}
    assert set(files) == {"sources", "packed"}
    # a second process: nothing in memory, and minifying or compressing again would fail
    bundle._shaken.cache_clear()
    bundle._compress.cache_clear()
    monkeypatch.setattr(bundle, "minified", lambda src: pytest.fail("minified again"))
    monkeypatch.setattr(bundle.lzma, "compress", lambda *a, **k: pytest.fail("compressed again"))
    assert shipped_sources(cfg) == first and build_bundle(cfg) == made
    # a cache file that is not what was written is rebuilt, never used
    monkeypatch.undo()
    monkeypatch.setattr(bundle, "cache_dir", lambda: tmp_path)
    bundle._compress.cache_clear()
    files["sources"].write_text(json.dumps({"key": "other", "sources": {"pgolf.main": "import os"}}))
    codec, packed = files["packed"].read_bytes().split(b"\0", 1)
    files["packed"].write_bytes(codec + b"\0" + bundle._compress.__wrapped__(b"not the payload")[1])
    assert shipped_sources(cfg) == first and build_bundle(cfg) == made
    # only the newest files of each kind stay
    monkeypatch.setattr(bundle, "CACHE_KEEP", {"sources": 1, "packed": 1})
    build_bundle(apply_overrides(cfg, ["--eval.ngram_order", "3"]))
    assert sorted(p.name.split(".")[1] for p in tmp_path.iterdir()) == ["packed", "sources"]
    # the key follows every file of the package: an edited module is a different key
    digest = bundle._package_digest()
    (bundle.package_root() / "errors.py").touch()
    assert bundle._package_digest() == digest  # same bytes, same key
    monkeypatch.setattr(bundle, "package_root", lambda: tmp_path)
    (tmp_path / "a.py").write_text("x = 1\n")
    one = bundle._package_digest()
    (tmp_path / "a.py").write_text("x = 2\n")
    assert bundle._package_digest() != one


def test_shipped_sources_are_minified_and_compile() -> None:
    cfg = get_preset("cpu-record-tuned")
    shipped = shipped_sources(cfg)
    for name, src in shipped.items():
        compile(src, name, "exec")
    assert sum(map(len, shipped.values())) < 0.9 * sum(len(stripped_source(n)) for n in shipped)


def test_baked_config_holds_only_changes_and_rebuilds_every_preset() -> None:
    from pgolf.bundle import baked_config
    from pgolf.config import ConfigError, config_to_dict
    from pgolf.flags import run_config_from_changes
    from pgolf.presets import PRESETS

    for name in PRESETS:
        cfg = get_preset(name)
        baked = json.loads(baked_config(cfg))
        rebuilt = config_to_dict(run_config_from_changes(baked))
        want = config_to_dict(apply_overrides(cfg, ["--train.seed", str(rebuilt["train"]["seed"])]))
        for key in ("run_id", "out_dir"):
            rebuilt.pop(key), want.pop(key)
        assert rebuilt == want, name
    baked = json.loads(baked_config(get_preset("cpu-record-tuned")))
    assert baked["optim"]["muon_momentum"] == 0.85 and "matrix_lr" in baked["optim"]
    assert "seed" not in baked["train"] and "beta2" not in baked["optim"]  # defaults are not carried
    with pytest.raises(ConfigError, match="optim.nope"):
        run_config_from_changes({"optim": {"nope": 1}})
    with pytest.raises(ConfigError, match="optim.beta1"):
        run_config_from_changes({"optim": {"beta1": "high"}})


def test_the_shake_follows_each_module_s_own_imports() -> None:
    sources = {
        "pgolf.a": "def report():\n    pass\ndef helper():\n    pass\ndef by_attribute():\n    pass\ndef stop():\n    pass\n"
                   "def local_only():\n    pass\n",
        "pgolf.b": "from pgolf.a import helper\nimport pgolf.a as a\ndef report():\n    return helper()\nX = report()\n"
                   "Y = a.by_attribute\ndef run(stop, local_only):\n    if stop:\n        a.stop()\n    return local_only\nZ = run(1, 2)\n",
    }
    dead = {(m, n) for m, n, _ in unreferenced_defs(sources)}
    # b's bare `report` is b's own: a's is dead; `local_only` is only ever a parameter; an import keeps its
    # name, an attribute keeps every definition of its name (a local `stop` beside `a.stop()` too)
    assert dead == {("pgolf.a", "report"), ("pgolf.a", "local_only")}
