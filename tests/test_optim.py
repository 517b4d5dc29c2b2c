"""rc3.optim: the schedule and the weight-decay rule both loops use, written out by hand here."""
import math

import pytest
import torch

from rc3.optim import lr_factor, param_groups, use_bf16


def test_schedule_points():
    lin = lr_factor("linear", warmup=4, total=14)
    assert [lin(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lin(4) == 1.0 and lin(9) == pytest.approx(0.5) and lin(14) == 0.0 and lin(20) == 0.0
    cos = lr_factor("cosine", warmup=0, total=10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0, abs=1e-12)
    assert cos(2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor("constant", 2, 10)(7) == 1.0
    short = lr_factor("linear", warmup=10, total=5)  # shorter than its warmup: peak after it, never negative
    assert short(4) == 0.5 and short(12) == 1.0
    with pytest.raises(ValueError, match="schedule must be"):
        lr_factor("step", 1, 2)


def test_decay_rule_and_groups_of_both_loops():
    model = torch.nn.ModuleDict({"rc3": torch.nn.ModuleDict({"proj": torch.nn.Linear(3, 4),
                                                              "layer_norm": torch.nn.LayerNorm(4)}),
                                 "head": torch.nn.Linear(4, 2)})
    model["rc3"]["proj"].bias.requires_grad_(False)
    pre = param_groups(model.named_parameters(), 0.01)
    assert [len(g["params"]) for g in pre] == [2, 3]  # rc3.proj.weight, head.weight | norm weight+bias, head.bias
    assert pre[0]["params"][0] is model["rc3"]["proj"].weight and [g["weight_decay"] for g in pre] == [0.01, 0.0]
    ft = param_groups(model.named_parameters(), 0.01, lr=1e-4, head_lr_mult=10, is_head=lambda n: not n.startswith("rc3."))
    by = {(g["weight_decay"], g["lr"]): len(g["params"]) for g in ft}
    assert by == {(0.01, 1e-4): 1, (0.0, 1e-4): 2, (0.01, 1e-3): 1, (0.0, 1e-3): 1}


def test_precision_rule():
    assert use_bf16("bf16") and not use_bf16("fp32")
    assert use_bf16("auto") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert not use_bf16("auto", preset_bf16=False)
    with pytest.raises(ValueError):
        use_bf16("fp16")
