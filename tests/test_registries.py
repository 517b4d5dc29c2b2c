"""Registries: a new objective, stream and corpus are each one record, registered here from the test only.

Each toy record is registered inside a `with ... .temporarily(...)` block, and every part of the
framework that used to keep a list of its own must pick it up: config sections and validation, the
loss loop and the p_avg trackers (objectives); the shard pipeline, its fault counting, the config's
shard keys and dataset_stats' schema detection (corpora).
"""
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rc3.config import ConfigError
from rc3.data.config import DataConfig
from rc3.data.corpora import CORPORA, Corpus
from rc3.data.pipeline import make_pipeline
from rc3.data.schemas import SampleError, decode_json
from rc3.modeling import RC3Model
from rc3.pretrain.config import ObjectivesConfig, load_config
from rc3.pretrain.objectives import ObjectiveState, compute_losses
from rc3.pretrain.registry import OBJECTIVES, STREAMS, Objective, ObjectiveResult, Stream, TaskConfig
from rc3.synthetic.tiny import random_task_batches, tiny_model_config

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300
PAPER_SHARDS = ["data.ds_shards=ds.tar", "data.dw_shards=dw.tar", "data.dt_shards=dt.tar"]


# ---- a toy objective -------------------------------------------------------------------------

@dataclass
class NormConfig(TaskConfig):
    target: float = 1.0  # a key of the toy objective's own section


def norm_loss(ctx, batch):
    """Pull the text representation's norm towards `target`: (||TR(x^i)|| - target)^2, averaged."""
    tr = ctx.model.tr(batch["src_ids"], batch["src_mask"])
    target = ctx.cfg.section("tr_norm").target
    return ObjectiveResult((tr.norm(dim=-1) - target).pow(2).mean(), extras={"tr_norm_mean": tr.norm(dim=-1).mean().detach()})


TOY = Objective("tr_norm", stream="dt", loss=norm_loss, config=NormConfig, description="toy: TR norm")


def test_a_registered_objective_gets_a_config_section_and_a_loss():
    with pytest.raises(ConfigError, match="objectives.tr_norm: unknown key"):
        load_config(REPO / "configs/synthetic-tiny.yaml", ["objectives.tr_norm.weight=0.5"])
    with OBJECTIVES.temporarily(TOY):
        cfg = load_config(REPO / "configs/synthetic-tiny.yaml",
                          ["objectives.tr_norm.weight=0.5", "objectives.tr_norm.target=2.0"])
        assert cfg.objectives.enabled()[-1] == "tr_norm"
        assert cfg.objectives.tr_norm == NormConfig(weight=0.5, target=2.0)
        with pytest.raises(ConfigError, match="objectives.tr_norm.target: expected float"):
            load_config(REPO / "configs/synthetic-tiny.yaml", ["objectives.tr_norm.target=[1]"])

        torch.manual_seed(0)
        model = RC3Model.from_config(tiny_model_config(), VOCAB).eval()
        batches = random_task_batches(VOCAB, batch_size=4, seed=3)
        assert batches["tr_norm"] is batches["xtcl"]  # the harness hands it its stream's corpus batch
        out = compute_losses(model, batches, cfg.objectives, ObjectiveState.create(), torch.Generator().manual_seed(0))
        # the reference, written from the formula on the raw batch tensors (not through the record)
        with torch.no_grad():
            tr = model.tr(batches["xtcl"]["src_ids"], batches["xtcl"]["src_mask"])
            ref = ((tr.norm(dim=-1) - 2.0) ** 2).mean()
        torch.testing.assert_close(out.parts["tr_norm"], ref)
        assert "tr_norm_mean" in out.extras
        weights = {n: cfg.objectives.section(n).weight for n in cfg.objectives.enabled()}
        torch.testing.assert_close(out.loss.detach(), sum(weights[n] * out.parts[n] for n in weights))
    assert "tr_norm" not in OBJECTIVES and "tr_norm" not in {f for f in vars(ObjectivesConfig())}


def test_a_contrastive_objective_gets_its_p_avg_tracker():
    contrastive = Objective("toy_contrastive", stream="dt", loss=norm_loss, p_avg_group="toy")
    with OBJECTIVES.temporarily(contrastive):
        assert set(ObjectiveState.create().trackers) == {"xtcl", "rxvtcl", "toy"}
        assert set(ObjectiveState.create(p_avg_scope="per_corpus").trackers) == {
            "xtcl", "rxvtcl_ds", "rxvtcl_dw", "toy_contrastive"}
    assert set(ObjectiveState.create().trackers) == {"xtcl", "rxvtcl"}


def test_an_objective_on_a_new_stream_requires_its_corpus_shards():
    only_toy = [f"objectives.{n}.enabled=false" for n in ("mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw")]
    with STREAMS.temporarily(Stream("dw_texts", "dw")), \
            OBJECTIVES.temporarily(Objective("dw_norm", stream="dw_texts", loss=norm_loss)):
        with pytest.raises(ConfigError, match=r"data.dw_shards: required by the enabled objective\(s\) dw_norm"):
            load_config(None, only_toy)
        cfg = load_config(None, [*only_toy, "data.dw_shards=x-{0..1}.tar"])
        assert cfg.objectives.enabled() == ["dw_norm"]


def test_registry_errors_name_what_is_registered():
    with pytest.raises(KeyError, match="unknown pretraining objective 'nope'; registered: mclm, itm, xtcl"):
        OBJECTIVES.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        OBJECTIVES.register(OBJECTIVES.get("itm"))
    with pytest.raises(ValueError, match="must be a Python identifier"):
        OBJECTIVES.register(Objective("r-xvtcl", stream="dt", loss=norm_loss))


# ---- a toy corpus ----------------------------------------------------------------------------

def _decode_qa(raw, needs_image, draft_size):
    obj = decode_json(raw, "qa.json")
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("q", "a")):
        raise SampleError("qa.json", "expected non-empty strings 'q' and 'a'", raw["__key__"])
    return {"key": raw["__key__"], **obj}


class QACollator:
    corpus = "dq"
    langs = ("en",)
    needs_image = False
    image_size = None

    def reject(self, sample):
        return None

    def __call__(self, samples, epoch=0):
        return {"keys": [s["key"] for s in samples], "q": [s["q"] for s in samples]}


QA = Corpus(name="dq", description="toy question-answer pairs", fields=("qa.json",), optional=(),
            markers=("qa.json",), decode=_decode_qa, inspect=lambda raw: _decode_qa(raw, False, None),
            texts=lambda s: (s["q"], s["a"]), languages=lambda s: ["en"], needs_image=False,
            collator=lambda cfg, tok, seed: QACollator())


def _write_qa_shard(path: Path, n: int, broken: set[int]) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            body = b"{not json" if i in broken else json.dumps({"q": f"question {i}?", "a": f"answer {i}"}).encode()
            info = tarfile.TarInfo(f"{i:06d}.qa.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_a_registered_corpus_streams_counts_faults_and_gets_config_keys(tmp_path):
    shard = tmp_path / "dq-000000.tar"
    _write_qa_shard(shard, 12, broken={5})
    with pytest.raises(ValueError, match="unknown corpus 'dq'"):
        make_pipeline("dq", str(shard), 4, QACollator())
    with CORPORA.temporarily(QA):
        cfg = load_config(None, [*PAPER_SHARDS, "data.dq_shards=" + str(shard)])
        assert cfg.data.shards("dq") == str(shard) and DataConfig().dq_sources == []
        loader = make_pipeline("dq", str(shard), 4, QACollator(), skip_budget=0.5, shuffle_buffer=0, batches_per_epoch=2)
        keys = sorted(k for batch in loader for k in batch["keys"])
        assert len(keys) == 8 and "000005" not in keys
        assert loader.skips.as_dict() == {"bad_json": 1}

        from rc3.tools import dataset_stats

        report = dataset_stats.collect([shard])
        assert report["samples"] == {"dq": 11} and report["languages"] == {"en": 11}
        assert report["broken_samples"] == {"qa.json: not valid UTF-8 JSON": 1}
    with pytest.raises(ConfigError, match="data.dq_shards: unknown key"):
        load_config(None, [*PAPER_SHARDS, "data.dq_shards=x.tar"])


# ---- a toy downstream task -------------------------------------------------------------------

def test_a_registered_downstream_task_gets_defaults_a_parser_and_a_model_class():
    from rc3.finetune.cli import build_parser
    from rc3.finetune.config import finetune_config_from_dict
    from rc3.finetune.heads import ClassificationModel, task_model_class
    from rc3.finetune.registry import DOWNSTREAM, DownstreamTask

    def needs_two_langs(cfg):
        if len(cfg.data.test_langs) < 2:
            raise ConfigError("data.test_langs", "toy: at least two test languages")

    toy = DownstreamTask("toy_vqa", "Finetune on a toy VQA set.", {"lr": 3e-5, "batch_size": 64, "epochs": 2,
                         "max_text_len": 24}, "tests.toy:main", "rc3.finetune.heads:ClassificationModel",
                         validate=needs_two_langs)
    base = ["data.test=t", "data.train=x", "data.features=[f.h5]"]
    with pytest.raises(ConfigError, match="'toy_vqa' is not one of xvnli, xgqa, marvl, itr, mmt"):
        finetune_config_from_dict({}, "toy_vqa", base)
    with DOWNSTREAM.temporarily(toy):
        cfg = finetune_config_from_dict({}, "toy_vqa", [*base, "data.test_langs=[en,de]"])
        assert (cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs, cfg.data.max_text_len) == (3e-5, 64, 2, 24)
        with pytest.raises(ConfigError, match="toy: at least two test languages"):
            finetune_config_from_dict({}, "toy_vqa", base)
        assert build_parser("toy_vqa").description == "Finetune on a toy VQA set."
        assert task_model_class("toy_vqa") is ClassificationModel
    with pytest.raises(ValueError, match="unknown task 'toy_vqa'"):
        task_model_class("toy_vqa")


# ---- a toy visual front end --------------------------------------------------------------------

@dataclass
class GridConfig:
    cells: int = 4  # the image is averaged over cells x cells blocks


class GridTokens(torch.nn.Module):
    """cells^2 tokens: the mean colour of each block of the image, projected to d_model."""

    def __init__(self, cells: int, d_model: int) -> None:
        super().__init__()
        self.cells = cells
        self.proj = torch.nn.Linear(3, d_model)

    def tokens(self, visual, suffix, dtype):
        pixels = visual["grid" + suffix].to(dtype)
        pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, self.cells).flatten(2).transpose(1, 2)
        out = self.proj(pooled)
        return out, torch.ones(out.shape[:2], dtype=torch.bool)


def test_a_registered_front_end_and_mode_build_encode_and_get_config_keys():
    from rc3.modeling.visual import FRONT_ENDS, VISUAL_MODES, FrontEnd, VisualMode
    from rc3.modeling.visual_inputs import VisualSource

    grid = FrontEnd("grid", ("grid",), "pixels", lambda c, d: GridTokens(c.grid.cells, d), config=GridConfig)
    with pytest.raises(ConfigError, match="model.visual_mode: 'roi_grid' is not one of roi, patch, combined"):
        load_config(None, [*PAPER_SHARDS, "model.visual_mode=roi_grid"])
    with FRONT_ENDS.temporarily(grid), VISUAL_MODES.temporarily(VisualMode("roi_grid", ("roi", "grid"))):
        cfg = load_config(None, [*PAPER_SHARDS, "model.visual_mode=roi_grid", "model.grid.cells=3"])
        assert cfg.model.grid == GridConfig(cells=3)
        torch.manual_seed(0)
        model = RC3Model.from_config(tiny_model_config(visual_mode="roi_grid", grid=GridConfig(cells=3)), VOCAB)
        g = torch.Generator().manual_seed(0)
        visual = {"roi": torch.randn(2, 36, 2048, generator=g), "boxes": torch.rand(2, 36, 5, generator=g),
                  "grid": torch.rand(2, 3, 24, 24, generator=g)}
        ids = torch.randint(4, 200, (2, 6), generator=g)
        enc = model.encode(ids, torch.ones(2, 6, dtype=torch.bool), visual)
        assert enc.text_start == 1 + 36 + 1 + 9  # [CLS] ROIs [SEP] 3x3 grid cells, then the text
        enc.hidden.sum().backward()
        assert model.visual.grid.proj.weight.grad.abs().sum() > 0
        with pytest.raises(ValueError, match="needs an image folder"):
            VisualSource("roi_grid", features=["x.h5"])
    assert "grid" not in FRONT_ENDS and not hasattr(tiny_model_config(), "grid")
