"""tools/plot_run.py on the logs the code itself writes (rc3.run_log for pretraining, a finetuning
recipe's metrics.jsonl), and the per-language chart written next to results.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def png_ok(path: Path) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 5  # drawn, not blank
    return img


@pytest.mark.slow  # starts Python processes that import torch
def test_plot_run_draws_a_pretraining_log(tmp_path: Path) -> None:
    from rc3.plots import plot_run, read_metrics
    from rc3.run_log import RunLogger

    log = RunLogger(tmp_path, enabled=True, total_steps=40, tensorboard=False)
    for step in range(5, 45, 5):  # the fields training.py logs
        log.write({"step": step, "lr": 1e-3 * step / 40, "loss": 20.0 / step, "mclm": 10.0 / step, "itm": 0.69,
                   "xtcl": 4.0 / step, "rxvtcl_ds": 2.0 / step, "itm_acc": 0.5, "xtcl_negatives": 62.0,
                   "p_avg.xtcl": 0.01 * step, "p_avg.rxvtcl": 0.02 * step, "samples_per_s": 40.0 + step,
                   "tokens_per_s": 14000.0, "skipped_samples": 0, "step_time_s": 3.0, "data_wait_share": 0.01})
    log.event("checkpoint step_00000020 saved", step=20)
    log.write({"step": 20, "lr": 5e-4, "loss": 0.5, "mclm": 0.3, "itm": 0.6, "xtcl": 0.1, "rxvtcl_ds": 0.1,
               "p_avg.xtcl": 0.2, "p_avg.rxvtcl": 0.4, "samples_per_s": 50.0, "data_wait_share": 0.02})  # resumed
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 50, "loss": \n')  # a line cut by a kill
    records, bad = read_metrics(tmp_path / "metrics.jsonl")
    assert bad == 1 and [r["step"] for r in records] == list(range(5, 45, 5))
    assert records[3]["loss"] == 0.5  # the record written after the resume wins
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_run.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "losses per task, p_avg, learning rate, data wait share, samples/s, accuracy" in proc.stdout
    png_ok(tmp_path / "curves.png")
    path, panels = plot_run(tmp_path, tmp_path / "other.png")
    assert path.name == "other.png" and panels[0] == "losses per task"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"event": "start"}\n')
    with pytest.raises(ValueError, match="no step records"):
        plot_run(tmp_path / "empty")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_run.py"), str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0 and "no metrics.jsonl" in proc.stderr


def test_loss_fields_are_told_from_the_other_fields() -> None:
    from rc3.plots import is_loss

    assert all(is_loss(k) for k in ("loss", "mclm", "mclm_dec", "itm", "kl", "rxvtcl_dw", "loss_itm", "loss_contrastive"))
    assert not any(is_loss(k) for k in ("lr", "itm_acc", "acc_itm", "xtcl_negatives", "p_avg.xtcl", "dev_accuracy",
                                        "samples_per_s", "data_wait_share", "epoch"))


@pytest.mark.slow  # starts Python processes that import torch
def test_finetuning_writes_a_results_chart_and_its_log_plots(tmp_path: Path, tokenizer, tokenizer_dir: Path) -> None:
    import torch
    from test_finetune import build_world, run_recipe
    from tiny import tiny_model_config

    from rc3.modeling import RC3Model
    from rc3.plots import plot_run

    world = tmp_path / "world"
    build_world(world)
    torch.manual_seed(0)
    model_dir = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id,
                                     tokenizer.eos_id).save_pretrained(tmp_path / "init", tokenizer_dir=tokenizer_dir)
    out = tmp_path / "xvnli"
    results = run_recipe("xvnli", world, model_dir, out, "train.epochs=2", "train.max_steps=null")
    chart = png_ok(out / "results.png")
    assert (out / "results.md").is_file()
    # One bar per language: the chart's width grows with the rows (3 languages here).
    assert len(results) == 3 and chart.shape[1] > chart.shape[0]
    path, panels = plot_run(out)
    assert panels == ["losses per task", "learning rate", "data wait share", "samples/s", "dev"]
    png_ok(path)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 for r in records if "loss" in r)


def _log(path: Path, steps: int = 60) -> None:
    with path.open("w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "lr": 1e-4 * step, "loss": 9.0 / step, "mclm": 5.0 / step,
                                "itm": 0.7, "xtcl": 3.0 / step, "p_avg.xtcl": 0.01 * step, "samples_per_s": 40.0,
                                "data_wait_share": 0.02, "itm_acc": 0.5, "dev_acc_en": 0.3}) + "\n")


def test_plot_run_takes_the_log_file_and_no_text_overlaps(tmp_path: Path) -> None:
    """Every text of curves.png (titles, axis labels, tick labels, legends' frames) is measured after layout:
    no two texts of different panels intersect."""
    import matplotlib.pyplot as plt

    from rc3.plots import plot_run, run_figure

    run = tmp_path / "run"
    run.mkdir()
    _log(run / "metrics.jsonl")
    path, panels = plot_run(run / "metrics.jsonl")  # the file itself, as well as its directory
    assert path == run / "curves.png" and len(panels) == 7
    png_ok(path)
    fig, _ = run_figure(run / "metrics.jsonl")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []  # (panel index, bbox) of every drawn text

    def drawn_ticks(axis) -> list:  # matplotlib keeps labels of ticks outside the view; they are not drawn
        lo, hi = sorted(axis.get_view_interval())
        return [t.label1 for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi]

    for i, ax in enumerate(fig.axes):
        if not ax.axison:
            continue
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *drawn_ticks(ax.xaxis), *drawn_ticks(ax.yaxis)]
        boxes += [(i, t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    boxes.append((-1, fig._suptitle.get_window_extent(renderer)))
    clashes = [(i, j) for n, (i, a) in enumerate(boxes) for j, b in boxes[n + 1:] if i != j and a.overlaps(b)]
    plt.close(fig)
    assert not clashes, clashes
