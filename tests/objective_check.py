"""Train XTCL and R-XVtCL (Ds, Dw) on a synthetic world and measure what each is meant to teach.

`python tests/objective_check.py WORLD OUT.json STEPS [KEY=VALUE ...]`: `rc3.pretrain.loop.train` (one
rank, DeepSpeed engine, the world's shards) for STEPS steps of the objectives XTCL, R-XVtCL on Ds and
R-XVtCL on Dw (MCLM and ITM off, so each measure below has one objective to answer to), the run's last
checkpoint read back as a model directory (OUT-model/); STEPS = 0 measures the untrained model of the
same config and seed, STEPS = -1 the OUT-model/ an earlier run wrote. OUT.json holds, over the first
EVAL_STEPS batches of the Ds and Dw streams (the same batches in every run: same seed, same config):

- `tr_acc` (XTCL, Eq. 4-7): the text-only [BOS] state of each Ds caption x^i finds the parallel
  caption x^j of the same image (another language) as its Euclidean nearest neighbour among the
  batch's x^j; Ds captions are not in Dt, so these sentences are new to XTCL. Chance 1/B.
- `vtr_acc` (R-XVtCL on Ds, Eq. 8-9): the [CLS] state of (v_b, x_b^i) finds (v_b, x_b^j) nearest
  among (v_b, x_k^j) for every caption x_k^j of the batch: the same image with every caption, the
  paper's negatives of type (1), so only reading the text can tell them apart. Chance 1/B.
  `vtr_ratio`: the distance to (v_b, x_b^j) over the mean distance to the other (v_b, x_k^j): below 1
  when Eq. 9's positive is pulled in more than its type (1) negatives; about 1 for a collapsed model.
- `kl` (R-XVtCL's regulariser on Dw, Eq. 10-12): KL(P_vtr || P_tr) over the candidates x^j, x^i-hat,
  x^j-hat of the next triplet of the batch, P = softmax(-Euclidean distance to the anchor), computed
  here from the model's states with the equations written out, not with rc3's losses.

tests/test_objective_training.py runs it and compares runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rc3.modeling import RC3Model, build_model, load_tokenizer
from rc3.pretrain.config import load_config
from rc3.pretrain.loop import train
from rc3.pretrain.streams import ObjectiveStreams
from rc3.tools.zero_to_safetensors import convert

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "repro" / "synthetic.yaml"
EVAL_STEPS = 3


def overrides(world: Path, run_dir: Path, steps: int, extra: list[str]) -> list[str]:
    return [f"model.tokenizer={world}/tokenizer", f"data.ds_shards={world}/shards/ds/ds-*.tar",
            f"data.dw_shards={world}/shards/dw/dw-*.tar", f"data.dt_shards={world}/shards/dt/dt-*.tar",
            "objectives.mclm.enabled=false", "objectives.itm.enabled=false", f"train.total_steps={max(steps, 1)}",
            "optim.warmup_steps=20", f"train.save_every={max(steps, 1)}", "data.prefetch_steps=0",
            f"train.run_dir={run_dir}", *extra]


def nearest_acc(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """Share of rows i of `queries` whose Euclidean nearest row of `keys` is row i."""
    return float((torch.cdist(queries, keys).argmin(dim=1) == torch.arange(len(queries))).float().mean())


@torch.no_grad()
def measure(model: RC3Model, cfg) -> dict[str, float]:
    model.eval()
    streams = ObjectiveStreams(cfg, load_tokenizer(cfg.model), rank=0, world_size=1, prefetch_steps=0)
    tr_acc, vtr_acc, vtr_ratio, kl = [], [], [], []
    try:
        for _ in range(EVAL_STEPS):
            batches = streams.next_batches()
            ds, dw = batches["rxvtcl_ds"], batches["rxvtcl_dw"]
            b = ds["src_ids"].shape[0]
            tr_acc.append(nearest_acc(model.tr(ds["src_ids"], ds["src_mask"]), model.tr(ds["tgt_ids"], ds["tgt_mask"])))
            roi = {k: ds[k] for k in ("roi", "boxes", "roi_mask")}
            anchor = model.vtr(ds["src_ids"], ds["src_mask"], roi, "roi")
            hits, ratios = 0, []
            for i in range(b):  # image i with every x^j of the batch
                image = {k: v[i:i + 1].expand(b, *v.shape[1:]) for k, v in roi.items()}
                d = torch.cdist(anchor[i:i + 1], model.vtr(ds["tgt_ids"], ds["tgt_mask"], image, "roi"))[0]
                hits += int(d.argmin() == i)
                ratios.append(float(d[i] / torch.cat([d[:i], d[i + 1:]]).mean()))
            vtr_acc.append(hits / b)
            vtr_ratio.append(sum(ratios) / b)
            kl.append(regulariser_kl(model, dw, {"pixels": dw["pixels"]}, "patch"))
    finally:
        streams.close()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"tr_acc": mean(tr_acc), "vtr_acc": mean(vtr_acc), "vtr_ratio": mean(vtr_ratio), "kl": mean(kl)}


def regulariser_kl(model: RC3Model, batch: dict, vis: dict, mode: str) -> float:
    """Mean over the batch of KL(P_vtr || P_tr), Eq. 10-12, with the next triplet as the other one."""
    src, smask, tgt, tmask = batch["src_ids"], batch["src_mask"], batch["tgt_ids"], batch["tgt_mask"]
    b = src.shape[0]
    nxt = torch.roll(torch.arange(b), -1)
    tr_i, tr_j = model.tr(src, smask), model.tr(tgt, tmask)
    # candidates of anchor b: x^j_b, x^i_{b+1}, x^j_{b+1}
    d_tr = torch.stack([(tr_j - tr_i).norm(dim=-1), (tr_i[nxt] - tr_i).norm(dim=-1),
                        (tr_j[nxt] - tr_i).norm(dim=-1)], dim=1)
    anchor = model.vtr(src, smask, vis, mode)
    d_vtr = torch.stack([(model.vtr(tgt, tmask, vis, mode) - anchor).norm(dim=-1),
                         (model.vtr(src[nxt], smask[nxt], vis, mode) - anchor).norm(dim=-1),
                         (model.vtr(tgt[nxt], tmask[nxt], vis, mode) - anchor).norm(dim=-1)], dim=1)
    p_vtr, p_tr = torch.softmax(-d_vtr.double(), dim=1), torch.softmax(-d_tr.double(), dim=1)
    return float((p_vtr * (p_vtr.log() - p_tr.log())).sum(dim=1).mean())


def main(world: Path, out: Path, steps: int, extra: list[str]) -> None:
    run_dir = out.parent / (out.stem + "-run")
    cfg = load_config(CONFIG, overrides(world, run_dir, steps, extra))
    if steps < 0:  # measure the model directory the run of the same OUT wrote before
        model = RC3Model.from_pretrained(out.parent / (out.stem + "-model"))
    elif steps > 0:
        assert train(cfg) == steps
        model = RC3Model.from_pretrained(convert(run_dir, out.parent / (out.stem + "-model"), overwrite=True))
    else:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, load_tokenizer(cfg.model))
    # Measured on the Ds and Dw streams with R-XVtCL on, whatever the run trained.
    eval_cfg = load_config(CONFIG, overrides(world, run_dir, steps, [*extra, "objectives.rxvtcl_ds.enabled=true",
                                                                      "objectives.rxvtcl_dw.enabled=true"]))
    out.write_text(json.dumps(measure(model, eval_cfg)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
