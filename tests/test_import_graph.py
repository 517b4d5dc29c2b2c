"""rc3's import graph: no module imports one of a higher layer, and no two modules import each other
through any chain, counting imports inside functions (which hide cycles and upward dependencies from
Python, not from the design). The layers are README's ("Design notes", "Layers"); the graph is read
from the source with `ast`, so the check needs no import of rc3 and sees every code path."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import its own layer's modules (without a cycle) and lower layers'.
# Keys are rc3's top-level modules and packages (a package covers all its submodules).
LAYERS: dict[str, int] = {
    # 0 foundations: the config engine, registries, files, tokenizer, process plumbing; no model, no data
    **dict.fromkeys(["rc3", "rc3.atomic", "rc3.checkpoints", "rc3.config", "rc3.distributed", "rc3.fault_injection",
                     "rc3.heap", "rc3.metrics_window", "rc3.op_cache", "rc3.optim", "rc3.plots", "rc3.provenance", "rc3.registry", "rc3.rng",
                     "rc3.run_log", "rc3.safe_load", "rc3.tokenization", "rc3.vocab"], 0),
    # 1 inputs: corpora, shards, features, images, region extraction
    **dict.fromkeys(["rc3.data", "rc3.vision"], 1),
    # 2 the model
    **dict.fromkeys(["rc3.modeling"], 2),
    # 3 training: pretraining, finetuning, adding a language
    **dict.fromkeys(["rc3.pretrain", "rc3.finetune", "rc3.add_language"], 3),
    # 4 using trained models, and the synthetic world that exercises all of the above
    **dict.fromkeys(["rc3.inference", "rc3.evaluate", "rc3.synthetic"], 4),
    # 5 front doors: the console scripts' modules
    **dict.fromkeys(["rc3.cli", "rc3.tools"], 5),
}
LAYER_NAMES = ["foundations", "inputs", "model", "training", "use", "front doors"]


def rc3_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the rc3 package under `root`."""
    out = {}
    for path in sorted((root / "rc3").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_edges(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported rc3 module: line of the first such import}, module-level and inside functions
    alike. `from pkg import name` counts as importing pkg.name when that is a module, else pkg."""
    modules = rc3_modules(root)

    def owner(name: str) -> str | None:  # the module defining a dotted name
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                found = owner(target) if target.split(".")[0] == "rc3" else None
                if found is not None and found != name:
                    edges.setdefault(name, {}).setdefault(found, node.lineno)
    return edges


def layer_of(module: str) -> int:
    top = ".".join(module.split(".")[:2])
    if top not in LAYERS:
        raise AssertionError(f"{module}: {top} is in no layer; add it to LAYERS here and to README's layer table")
    return LAYERS[top]


def upward_imports(edges: dict[str, dict[str, int]]) -> list[str]:
    """'a (layer) imports b (higher layer) at line n' for every import from a lower layer to a higher one."""
    out = []
    for src, targets in sorted(edges.items()):
        for dst, line in sorted(targets.items()):
            if layer_of(dst) > layer_of(src):
                out.append(f"{src} ({LAYER_NAMES[layer_of(src)]}) imports {dst} ({LAYER_NAMES[layer_of(dst)]}) "
                           f"at line {line}")
    return out


def import_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; rc3's graph is a few hundred nodes deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # a shortest path back to the start, within the component
        members, start = set(component), min(component)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges.get(v, {})):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle is not None:
                    break
            frontier = nxt
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    bad = upward_imports(import_edges(REPO))
    assert not bad, "imports against the layers (README, Design notes):\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    edges = import_edges(REPO)
    cycles = import_cycles(edges)
    lines = [" -> ".join(f"{a} (line {edges[a][b]})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}" for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_every_module_has_a_layer() -> None:
    for name in rc3_modules(REPO):
        layer_of(name)


# ---- the checker itself, on a package written here ----------------------------------------------

def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "rc3" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_an_upward_import_inside_a_function_is_named(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "config.py": "def f():\n    from rc3.pretrain import loop\n",
                               "pretrain/__init__.py": "", "pretrain/loop.py": "import rc3.config\n"})
    assert upward_imports(import_edges(root)) == [
        "rc3.config (foundations) imports rc3.pretrain.loop (training) at line 2"]


def test_a_cycle_hidden_in_functions_and_relative_imports_is_found(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "data/__init__.py": "",
                               "data/a.py": "from rc3.data import b\n",
                               "data/b.py": "def g():\n    from . import c\n",
                               "data/c.py": "def h():\n    from .a import x\n"})
    assert import_cycles(import_edges(root)) == [["rc3.data.a", "rc3.data.b", "rc3.data.c", "rc3.data.a"]]


@pytest.mark.parametrize("text", ["from rc3.pretrain.loop import train\n", "import rc3.pretrain.loop as loop\n"])
def test_module_level_upward_imports_are_named_too(tmp_path: Path, text: str) -> None:
    root = _package(tmp_path, {"__init__.py": "", "modeling/__init__.py": "", "modeling/build.py": text,
                               "pretrain/__init__.py": "", "pretrain/loop.py": ""})
    assert upward_imports(import_edges(root)) == [
        "rc3.modeling.build (model) imports rc3.pretrain.loop (training) at line 1"]
