"""Small-scale reproduction: result tables, sentence retrieval, and (slow) pretraining beats no pretraining."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rc3.repro.report import fmt, lang_mean, mean_std, table
from rc3.repro.sentence_retrieval import nn_accuracy

ROOT = Path(__file__).resolve().parents[1]


def test_mean_std_and_table() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert fmt([1.0, 3.0]) == "2.0 ± 1.4"
    runs = {"a": [{"en": {"m": 10.0}, "de": {"m": 2.0}}, {"en": {"m": 20.0}, "de": {"m": 4.0}}]}
    assert lang_mean(runs["a"][0], "m", ["de", "xx"]) == 2.0
    md = table(runs, "m", ["en", "de"], {"zs": ["de"]})
    assert "| a | 15.0 ± 7.1 | 3.0 ± 1.4 | 3.0 ± 1.4 |" in md


def test_nn_accuracy() -> None:
    q = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    assert nn_accuracy(q, q + 0.1) == 1.0
    assert nn_accuracy(q, q[[1, 0, 2]]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="row-aligned"):
        nn_accuracy(q, q[:2])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_pretraining_beats_no_pretraining(tmp_path: Path) -> None:
    """tools/repro_synthetic.py --quick (RC3 pretrained 100 steps on the synthetic world vs a random init).

    Asserted: pretraining aligns the languages, i.e. en -> de/id/ja/zh caption retrieval with the TR
    beats the random init by a wide margin. Not asserted: the zero-shot ITR mean R@1 after English
    finetuning, which at this scale sits near chance for both (the ITM re-ranker is still at chance,
    so R@1 is mostly the luck of the re-ranking; see REPRODUCTION.md); it is checked to be reported.
    """
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, "tools/repro_synthetic.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    align = summary["tr_alignment_seed0"]
    mean = lambda row: sum(row[k] for k in ("de", "id", "ja", "zh")) / 4  # noqa: E731
    pretrained, random_init = mean(align["RC3 (all four objectives)"]), mean(align["no pretraining"])
    assert pretrained > 2 * random_init and pretrained > random_init + 3, (pretrained, random_init)
    itr = summary["zero_shot_pretrained_langs"]["itr"]
    assert set(itr) == {"RC3 (all four objectives)", "no pretraining"}
    assert all(0.0 <= v[0] <= 100.0 for v in itr.values())
