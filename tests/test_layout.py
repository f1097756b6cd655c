"""The package's layout holds: no import circles and nothing imports upward, function-local imports included.

Layers, lowest first: the ground modules every phase stands on, then one package per pipeline phase in pipeline
order, then the command line. A module may import its own layer or any lower one, never a higher one; inside a
layer the imports must not form a circle.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "tinythinker"
LAYERS = ["ground", "data", "teacher", "lm", "student", "reflect", "results", "cli"]
# Top-level modules above the phases: the command line and the paper presets (which read a task's description and
# the student's curriculum to write params).
APP = {"tinythinker.cli", "tinythinker.__main__", "tinythinker.presets"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its body (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import mod` imports the module; `from mod import name` the module itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def layer(name: str) -> str:
    if name in APP:
        return "cli"
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "ground"


def graph() -> dict[str, set[str]]:
    found = modules()
    # A package's __init__ holds nothing: importing a module of it is not importing the package.
    return {name: {t for t in imports(name, path, set(found)) if found[t].name != "__init__.py" or t == "tinythinker"}
            for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each one circle or more."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(graph()) == []


def test_nothing_imports_a_higher_layer():
    upward = sorted(f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a, targets in graph().items() for b in targets
                    if LAYERS.index(layer(b)) > LAYERS.index(layer(a)))
    assert upward == []


def test_every_phase_is_a_package_of_the_layout():
    phases = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert phases == set(LAYERS) - {"ground", "cli"}


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert cycles(edges) == expected


def test_the_walker_sees_function_local_and_relative_imports(tmp_path):
    mod = tmp_path / "pkg" / "sub" / "m.py"
    mod.parent.mkdir(parents=True)
    mod.write_text("from .. import io\n\ndef f():\n    from ..data import tasks\n    from . import other\n")
    known = {"pkg.io", "pkg.data.tasks", "pkg.sub.other", "pkg.sub.m"}
    assert imports("pkg.sub.m", mod, known) == {"pkg.io", "pkg.data.tasks", "pkg.sub.other"}


def stage_modules() -> dict[str, str]:
    """dvc.yaml stage -> the module its `tinythinker` command runs (the cli command's `from .X import ... as run`)."""
    import re

    import yaml

    cli = (PKG / "cli.py").read_text()
    runs = {}
    for fn in re.split(r"\n@app\.command\([^)]*\)\n", cli)[1:]:
        name = re.match(r"def (\w+)\(", fn).group(1).replace("_", "-")
        found = re.search(r"from \.([\w.]+) import \w+ as run", fn)
        if found:
            runs[name] = "tinythinker." + found.group(1)
    stages = yaml.safe_load((PKG.parents[1] / "dvc.yaml").read_text())["stages"]
    return {stage: runs[(body.get("do") or body)["cmd"].split("tinythinker ", 1)[1].split()[0]]
            for stage, body in stages.items()}


def test_every_stage_depends_on_the_code_it_runs():
    """A stage's code deps cover every phase module its command imports (transitively) and protocol.py, so a
    change to that code reruns it; the ground (io, params, paths) checks and places, it writes no content."""
    import yaml

    g, found = graph(), modules()
    stages = yaml.safe_load((PKG.parents[1] / "dvc.yaml").read_text())["stages"]
    missing = {}
    for stage, start in stage_modules().items():
        deps = [d for d in (stages[stage].get("do") or stages[stage])["deps"] if d.startswith("src/")]
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += g[m]
        needed = {found[m].relative_to(PKG.parents[1]).as_posix() for m in seen
                  if layer(m) != "ground" or m == "tinythinker.protocol"}
        uncovered = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        if uncovered:
            missing[stage] = uncovered
    assert len(stage_modules()) == len(stages) and missing == {}


# Functions a newcomer reads top to bottom (issue 32): at most this many lines, and no class defined inside a
# function (a class in disguise hides shared state), anywhere in the package.
MAX_FUNCTION_LINES = 60


def _functions():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield rel, node


def test_functions_are_short_and_define_no_classes():
    long = sorted(f"{rel}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)" for rel, fn in _functions()
                  if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES)
    nested = sorted(f"{rel}:{fn.name} defines {c.name}" for rel, fn in _functions()
                    for c in ast.walk(fn) if isinstance(c, ast.ClassDef))
    assert (long, nested) == ([], [])


def test_no_test_module_imports_another():
    """What tests share lives in plain modules (tests/helpers.py, tests/teacher/fakes.py) and conftest fixtures."""
    tests = Path(__file__).resolve().parent
    bad = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{path.relative_to(tests)}: {n}" for n in names
                    if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_")]
    assert bad == []
