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
