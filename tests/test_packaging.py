"""The core install (no extras) is enough for the model, rc3.inference and the `rc3` command.

A child process hides every package that only an extra of pyproject.toml brings (DeepSpeed,
accelerate, TensorBoard, faiss, WebDataset, ...): every meta-path finder answers "not found" for
them, as if they were not installed, and the child imports rc3, rc3.inference and rc3.cli and runs
`rc3 embed --help`. The console scripts must name functions that exist.
"""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# Distribution name -> import name where they differ.
IMPORT_NAMES = {"faiss-cpu": "faiss", "faiss-gpu": "faiss", "pyyaml": "yaml", "pillow": "PIL", "msgpack-numpy": "msgpack_numpy",
                "protobuf": "google.protobuf"}

CHILD = r"""
import json, sys

hidden = set(json.loads(sys.argv[1]))


class Hidden:
    '''Wraps a meta-path finder: the hidden top-level packages are not found.'''

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
try:
    import deepspeed  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the hiding does not work: deepspeed imported")

import rc3, rc3.inference, rc3.cli  # noqa: E401,F401
from rc3.inference import RC3Inference  # noqa: F401

try:
    rc3.cli.main(["embed", "--help"])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("loaded:", sorted(m for m in sys.modules if m.partition(".")[0] in hidden))
"""


def _names(requirements: list[str]) -> set[str]:
    """Top-level import names of requirement strings ("deepspeed>=0.14" -> "deepspeed")."""
    out = set()
    for req in requirements:
        dist = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower()  # type: ignore[union-attr]
        if dist.startswith("rc3-vl"):
            continue
        out.add(IMPORT_NAMES.get(dist, dist.replace("-", "_")).partition(".")[0])
    return out


@pytest.mark.slow  # a child process imports torch, transformers and the model stack
def test_core_install_runs_inference_and_the_rc3_command_without_the_extras() -> None:
    core = _names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    only_extras = set().union(*(_names(extras[k]) for k in ("train", "cpu", "gpu", "extract"))) - core
    assert {"deepspeed", "accelerate", "tensorboard", "faiss"} <= only_extras, only_extras
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sorted(only_extras))], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: rc3 embed" in proc.stdout and "--text" in proc.stdout
    assert proc.stdout.strip().endswith("loaded: []"), proc.stdout[-500:]


def test_console_scripts_name_existing_functions() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert {"rc3", "rc3-pretrain", "rc3-finetune", "rc3-build-shards", "rc3-extract-roi", "rc3-convert-mbart50",
            "rc3-zero-to-safetensors", "rc3-export-hf"} <= set(scripts)
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_finetune_command_dispatches_by_task(capsys) -> None:
    from rc3.finetune.cli import main

    for argv, code in (([], 2), (["--help"], 0), (["nope"], 2)):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code == code, argv
        else:
            raise AssertionError(f"rc3-finetune {argv} did not exit")
    out = capsys.readouterr()
    tasks = ("xvnli", "xgqa", "marvl", "itr", "mmt")
    assert all(task in out.out for task in tasks) and "unknown task 'nope'" in out.err
    try:
        main(["xgqa", "--help"])
    except SystemExit as exit:
        assert exit.code == 0
    assert "usage: rc3-finetune xgqa" in capsys.readouterr().out
