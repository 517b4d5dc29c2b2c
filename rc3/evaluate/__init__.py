"""Evaluation of a pretrained model on every downstream task and language, with published rows beside it.

    from rc3.evaluate import EvalOptions, evaluate
    board = evaluate(EvalOptions(model_dir=Path("work/demo-model"), data=Path("work/synthetic/downstream"),
                                 out=Path("runs/eval"), recipes=Path("configs/finetune/synthetic")))

`rc3-evaluate` (rc3.tools.evaluate) is the command line. See rc3.evaluate.runner for the protocol.
"""
from __future__ import annotations

from rc3.evaluate.layout import LayoutError
from rc3.evaluate.runner import EvalOptions, evaluate

__all__ = ["EvalOptions", "LayoutError", "evaluate"]
