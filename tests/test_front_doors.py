"""Light front doors: `import rc3`, `import rc3.config` and every console script's `--help` (pyproject's
[project.scripts], and the subcommands of `rc3` and `rc3-finetune`) import neither torch nor
transformers. Each runs in a fresh process, as the installed script would (`from MODULE import FUNC;
FUNC()`); an import hook records which module's line imported the heavy package first, so a failure
names the module that pulled it in."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from procs import run_bounded

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
TIMEOUT_S = 300  # a cold start on a loaded 2-core machine; the light path takes well under a second

# Runs argv[1] (a statement) in this process, then prints, per heavy package imported, the innermost
# rc3 frame and the frame that imported it.
PROBE = r"""
import importlib.abc, json, sys, traceback
HEAVY = set(sys.argv[2].split(","))
culprits = {}

class Witness(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in HEAVY and top not in culprits:
            stack = traceback.extract_stack()[:-1]
            frames = [f for f in stack if "importlib" not in f.filename]
            ours = [f for f in frames if "/rc3/" in f.filename]
            where = ours[-1] if ours else (frames[-1] if frames else None)
            culprits[top] = "unknown" if where is None else f"{where.filename}:{where.lineno} ({where.line})"
        return None

sys.meta_path.insert(0, Witness())
try:
    exec(sys.argv[1], {"__name__": "__probe__"})
except SystemExit:
    pass
print("PROBE " + json.dumps(culprits))
"""


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def front_doors() -> list[tuple[str, str]]:
    """(label, statement) for each thing that must stay light."""
    doors = [("import rc3", "import rc3"), ("import rc3.config", "import rc3.config")]
    for name, target in console_scripts().items():
        module, func = target.split(":")
        commands = [[]]
        if name == "rc3":
            commands += [[c] for c in ("embed", "index", "search", "classify", "translate")]
        if name == "rc3-finetune":
            commands += [[t] for t in ("xvnli", "xgqa", "marvl", "itr", "mmt")]
        for sub in commands:
            argv = [name, *sub, "--help"]
            doors.append((" ".join(argv), f"import sys\nsys.argv = {argv!r}\nfrom {module} import {func}\n{func}()"))
    return doors


def probe(statement: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = run_bounded([sys.executable, "-c", PROBE, statement, ",".join(HEAVY)], timeout=TIMEOUT_S,
                       waiting_for=f"the import probe of `{statement}`", env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, f"`{statement}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE "):])


@pytest.mark.parametrize("label,statement", front_doors(), ids=[label for label, _ in front_doors()])
def test_front_door_imports_no_torch(label: str, statement: str) -> None:
    culprits = probe(statement)
    assert not culprits, f"`{label}` imports " + "; ".join(f"{pkg} (first from {where})" for pkg, where in
                                                           culprits.items())


def test_the_probe_names_the_module_that_pulls_torch_in() -> None:
    culprits = probe("import rc3.optim")  # rc3.optim imports torch at its top
    assert set(culprits) == {"torch"} and "rc3/optim.py" in culprits["torch"], culprits
