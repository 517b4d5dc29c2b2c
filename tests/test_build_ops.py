"""rc3.tools.build_ops: the DeepSpeed kernels compiled at install are the ones CPU runs load."""
from __future__ import annotations

import pytest

deepspeed = pytest.importorskip("deepspeed")


def test_cpu_ops_are_the_builders_deepspeed_loads_on_cpu_ranks() -> None:
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    from rc3.tools.build_ops import ops_for

    acc = get_accelerator()
    assert acc._name == "cpu"
    names = ops_for("cpu")
    builders = [acc.create_op_builder(n) for n in names]
    # real builders (the CPU registry answers unknown names with a NotImplementedBuilder), compatible here
    assert all(b is not None and type(b).__name__ == n for b, n in zip(builders, names))
    assert all(deepspeed.ops.__compatible_ops__[b.NAME] for b in builders)
    # the two DeepSpeed compiles on first use on CPU: the shm all-reduce of every launch, CPU Adam under offload
    assert {b.NAME for b in builders} == {"deepspeed_shm_comm", "cpu_adam"}
    assert ops_for("mps") == ()


def test_a_failed_build_is_named_and_fails_only_when_strict(monkeypatch, capsys) -> None:
    from deepspeed.ops.op_builder.cpu.cpu_adam import CPUAdamBuilder

    from rc3.tools import build_ops

    def broken(self, verbose=True):
        raise RuntimeError("c++: not found")

    monkeypatch.setattr(CPUAdamBuilder, "load", broken)
    assert build_ops.build(["CPUAdamBuilder"]) == 0
    assert "cpu_adam: build failed (RuntimeError: c++: not found)" in capsys.readouterr().err
    assert build_ops.build(["CPUAdamBuilder"], strict=True) == 1
    assert build_ops.build(["NoSuchBuilder"], strict=True) == 0
    assert "NoSuchBuilder: not available" in capsys.readouterr().out


def test_kernel_cache_lives_in_the_environment_unless_the_user_chose_one(monkeypatch, tmp_path) -> None:
    """TORCH_EXTENSIONS_DIR: <sys.prefix>/torch_extensions when unset (so two virtual environments never
    rebuild each other's kernels), the user's choice when set, for every entry point that builds ops."""
    import os
    import sys
    from pathlib import Path

    import torch

    from rc3 import distributed
    from rc3.op_cache import use_environment_extension_dir
    from rc3.pretrain.config import load_config
    from rc3.pretrain.engine import build_optimizer
    from rc3.tools import build_ops

    assert sys.prefix != sys.base_prefix  # the tests run in the project's virtual environment
    venv_cache = str(Path(sys.prefix) / "torch_extensions")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert use_environment_extension_dir() == venv_cache == os.environ["TORCH_EXTENSIONS_DIR"]
    assert Path(os.environ["TORCH_EXTENSIONS_DIR"]).is_relative_to(sys.prefix)

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert use_environment_extension_dir() == str(tmp_path / "mine")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")

    # the entry points: the ahead-of-time build, the start of every launch, the optimizer's kernels
    monkeypatch.setattr(build_ops, "build", lambda names, strict=False: 0)
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    cfg = load_config(None, ["data.ds_shards=x", "data.dw_shards=x", "data.dt_shards=x"])
    model = torch.nn.Linear(2, 2)
    for enter in (lambda: build_ops.main([]), distributed.init_from_launcher,
                  lambda: build_optimizer(model, cfg, on_gpu=False, offload=False)):
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        enter()
        assert os.environ.get("TORCH_EXTENSIONS_DIR") == venv_cache
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
        enter()
        assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")


@pytest.mark.parametrize("waits", [True, False])
def test_a_lock_left_by_an_interrupted_build_is_named_a_fresh_one_is_not(monkeypatch, tmp_path, capsys, waits) -> None:
    """A torch loader that waits on <cache>/<op>/lock (FileBaton) waits forever and silently: an old lock
    is named with the fix. One that holds an OS lock on the file (FileLock) leaves it after every build,
    harmless: nothing is said."""
    import os
    import time

    from rc3 import op_cache

    monkeypatch.setattr(op_cache, "loader_waits_on_lock_files", lambda: waits)

    old = tmp_path / "cpu_adam" / "lock"
    fresh = tmp_path / "deepspeed_shm_comm" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir()
        lock.touch()
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    (tmp_path / "fused_adam").mkdir()  # an op built without a lock left: nothing to say
    monkeypatch.setenv(op_cache.VARIABLE, str(tmp_path))
    assert op_cache.use_environment_extension_dir() == str(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    if not waits:
        assert err == []
        return
    assert len(err) == 1, err
    assert str(old) in err[0] and "60 min old" in err[0] and f"rm {old}" in err[0]
    assert str(fresh) not in err[0]


def test_this_torch_is_told_apart() -> None:
    """The pinned torch's loader holds an OS lock (torch.utils._filelock.FileLock) and leaves the file:
    told apart from the FileBaton loaders, whose lock files block."""
    import inspect

    from torch.utils import cpp_extension

    from rc3 import op_cache

    source = inspect.getsource(cpp_extension._jit_compile)
    assert op_cache.loader_waits_on_lock_files() == ("FileBaton(" in source)
