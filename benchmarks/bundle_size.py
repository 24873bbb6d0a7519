"""Where the counted code's bytes go: the bundle of a preset, module by module, and what the bundle's
shaking and one cheap encoding take off it.

    python benchmarks/bundle_size.py --preset cpu-record-tuned [--flags "--eval.ttt none"] [--out FILE]

Per module: the shipped source's bytes and the module compressed alone (LZMA2, the bundle's filter; the
modules share context in the real bundle, so these add up to more than it). Then, on the whole payload:
the top-level functions and classes the bundle leaves out because no bundled code reachable from the run
names them (`pgolf.bundle.unreferenced_defs`) with the payload as it would be with them, the payload without
the renaming of locals (`pgolf.bundle.minified`), and the payload as JSON (the encoding bundles used before
the NUL-joined one).

With `--coverage FILE` (a coverage.py data file of one run of the same config, e.g.
`coverage run --source=pgolf -m pgolf run --preset P --train.iterations 6 --eval.max_tokens 4000`) it
also reports the payload with every function that run never entered removed: a bound on what shipping
only the code paths one run takes (a bundle specialised to its config) would save.
"""

from __future__ import annotations

import argparse
import ast
import json
import lzma
import shlex
import sys

from jsonout import emit

from pgolf import bundle
from pgolf.flags import apply_overrides
from pgolf.presets import get_preset

def xz(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=bundle._LZMA_FILTERS))


def unentered_removed(sources: dict[str, str], executed: dict[str, set[int]]) -> dict[str, str]:
    """Each module named in `sources`, stripped and minified as the bundle does, with every function (at any depth) whose
    body holds no executed line removed; `executed` maps a module to the line numbers of its original file that
    ran (so the module is re-read and re-stripped here)."""

    class Drop(ast.NodeTransformer):
        def __init__(self, ran: set[int]):
            self.ran = ran

        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST | None:
            lines = {n.lineno for s in node.body for n in ast.walk(s) if hasattr(n, "lineno")}
            if not lines & self.ran:
                return None
            self.generic_visit(node)
            node.body = node.body or [ast.Pass()]
            return node

        visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    out = {}
    for module in sources:
        path = bundle.module_path(module)
        assert path is not None
        tree = Drop(executed.get(module, set())).visit(ast.parse(path.read_text(encoding="utf-8")))
        tree = bundle._Strip().visit(tree)
        out[module] = bundle.minified(ast.unparse(ast.fix_missing_locations(tree)))
    return out


def executed_lines(data_file: str, modules: list[str]) -> dict[str, set[int]]:
    """Module -> executed line numbers, from a coverage.py data file (matched by the module's file path)."""
    try:
        import coverage
    except ImportError:
        print("bundle_size.py: --coverage needs coverage.py; pip install coverage", file=sys.stderr)
        raise SystemExit(2) from None
    data = coverage.CoverageData(basename=data_file)
    data.read()
    if not data.measured_files():
        print(f"bundle_size.py: --coverage {data_file}: no coverage data there; make one with `coverage run "
              "--source=pgolf -m pgolf run ...`", file=sys.stderr)
        raise SystemExit(2)
    ran = {str(f): set(data.lines(f) or []) for f in data.measured_files()}
    out = {}
    for m in modules:
        path = bundle.module_path(m)
        assert path is not None
        tail = "/".join(path.parts[-(len(m.split(".")) + (path.name == "__init__.py")):])
        out[m] = next((lines for f, lines in ran.items() if f.endswith("/" + tail)), set())
    return out


def payload(sources: dict[str, str]) -> bytes:
    """The bundle's payload: module name -> [is package, source], canonical JSON."""
    return json.dumps({m: [bundle.is_package(m), s] for m, s in sources.items()}, sort_keys=True,
                      separators=(",", ":")).encode()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-record-tuned")
    ap.add_argument("--flags", default="", help="config overrides, as one string")
    ap.add_argument("--out", default="")
    ap.add_argument("--coverage", default="", help="coverage.py data file of one run of this config")
    args = ap.parse_args(argv)
    cfg = apply_overrides(get_preset(args.preset), shlex.split(args.flags))
    names = bundle.bundle_modules(cfg)
    stripped = {m: bundle.stripped_source(m) for m in names}
    sources = bundle.shipped_sources(cfg)  # stripped, less the definitions nothing reachable names
    modules = sorted(({"module": m, "source_bytes": len(s), "alone_compressed_bytes": xz(s.encode())}
                      for m, s in sources.items()), key=lambda r: -r["alone_compressed_bytes"])
    baked = bundle.baked_config(cfg)
    dead = bundle.unreferenced_defs(stripped)
    unminified = bundle.without_defs(stripped, dead)
    extra = {}
    if args.coverage:
        shaken = unentered_removed(sources, executed_lines(args.coverage, names))
        extra["unentered_functions_removed"] = {
            "source_bytes": sum(len(s) for s in shaken.values()),
            "payload_compressed_bytes": xz(bundle.joined_payload(shaken, baked)),
            "largest_cuts": sorted(({"module": m, "source_bytes_removed": len(sources[m]) - len(shaken[m])}
                                    for m in sources), key=lambda r: -r["source_bytes_removed"])[:10]}
    emit({
        "benchmark": "bundle_size", "preset": args.preset, "flags": args.flags,
        "bundle_bytes": bundle.code_bytes(cfg),
        "source_bytes": sum(len(s) for s in sources.values()),
        "payload_compressed_bytes": xz(bundle.joined_payload(sources, baked)),
        "payload_unminified_compressed_bytes": xz(bundle.joined_payload(unminified, baked)),
        "payload_json_compressed_bytes": xz(payload(sources)),
        "unreferenced_defs": {"count": len(dead), "source_bytes": sum(r[2] for r in dead),
                              "payload_with_them_compressed_bytes": xz(bundle.joined_payload(
                                  {m: bundle.minified(s) for m, s in stripped.items()}, baked)),
                              "largest": [{"module": m, "name": n, "source_bytes": b} for m, n, b in dead[:10]]},
        **extra,
        "modules": modules,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
