"""Registries: a new objective, corpus, visual front end and downstream task are each one module.

Each test writes a temporary package (under tmp_path, put on sys.path) whose modules each register
one record, exactly as a user's plugin or a new built-in module would, and names them in the config's
`plugins:` list. Every part of the framework that used to keep a list of its own must then pick the
record up: config sections and validation, the loss loop and the p_avg trackers (objectives); the
shard pipeline, its fault counting, the config's shard keys and dataset_stats' schema detection
(corpora); the model's submodules and the encoder (front ends); Table 6 defaults, the command line,
training and evaluation through the finetuning harness (downstream tasks). A saved model must still
load after a front end is registered, and a registry must find the modules of its package itself.
"""
from __future__ import annotations

import io
import json
import logging
import sys
import tarfile
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from tiny import random_objective_batches, tiny_model_config

from rc3.config import ConfigError, import_plugins
from rc3.data.corpora import CORPORA
from rc3.finetune.registry import DOWNSTREAM
from rc3.modeling import RC3Model
from rc3.modeling.visual import FRONT_ENDS, VISUAL_MODES
from rc3.pretrain.config import load_config
from rc3.pretrain.objectives import ObjectiveState, compute_losses
from rc3.pretrain.registry import OBJECTIVES, STREAMS, Objective, ObjectiveResult, Stream
from rc3.registry import Registry

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/synthetic-tiny.yaml"
VOCAB = 300
PAPER = ["mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw"]
PAPER_SHARDS = ["data.ds_shards=ds.tar", "data.dw_shards=dw.tar", "data.dt_shards=dt.tar"]
TINY_MODEL = ["model.d_model=32", "model.encoder_layers=1", "model.decoder_layers=1", "model.attention_heads=4",
              "model.ffn_dim=64", "model.patch_dim=48"]

# ---- the plugin modules, one file each ------------------------------------------------------------

OBJECTIVE = '''
"""A toy pretraining objective: pull the text representation's norm towards objectives.tr_norm.target."""
from dataclasses import dataclass

from rc3.pretrain.registry import OBJECTIVES, Objective, ObjectiveConfig, ObjectiveResult


@dataclass
class NormConfig(ObjectiveConfig):
    target: float = 1.0  # a key of the objective's own section


def norm_loss(ctx, batch):
    tr = ctx.model.tr(batch["src_ids"], batch["src_mask"])
    target = ctx.cfg.section("tr_norm").target
    return ObjectiveResult((tr.norm(dim=-1) - target).pow(2).mean(), extras={"tr_norm_mean": tr.norm(dim=-1).mean().detach()})


OBJECTIVES.register(Objective("tr_norm", stream="dt", loss=norm_loss, config=NormConfig, description="toy: TR norm"))
'''

CORPUS = '''
"""A toy corpus of question-answer pairs: one member, qa.json."""
from rc3.data.corpora import CORPORA, Corpus
from rc3.data.schemas import SampleError, decode_json


def decode(raw, needs_image, draft_size):
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


CORPORA.register(Corpus(
    name="dq", description="toy question-answer pairs", fields=("qa.json",), optional=(), markers=("qa.json",),
    decode=decode, inspect=lambda raw: decode(raw, False, None), texts=lambda s: (s["q"], s["a"]),
    languages=lambda s: ["en"], needs_image=False, collator=lambda cfg, tok, seed: QACollator()))
'''

FRONT_END = '''
"""A toy visual front end: the mean colour of each of cells x cells blocks of the image, projected."""
from dataclasses import dataclass

import torch

from rc3.modeling.visual import FRONT_ENDS, VISUAL_MODES, FrontEnd, VisualMode


@dataclass
class GridConfig:
    cells: int = 4  # model.grid.cells


class GridTokens(torch.nn.Module):
    def __init__(self, cells, d_model):
        super().__init__()
        self.cells = cells
        self.proj = torch.nn.Linear(3, d_model)

    def tokens(self, visual, suffix, dtype):
        pixels = visual["grid" + suffix].to(dtype)
        pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, self.cells).flatten(2).transpose(1, 2)
        out = self.proj(pooled)
        return out, torch.ones(out.shape[:2], dtype=torch.bool)


FRONT_ENDS.register(FrontEnd("grid", ("grid",), "pixels", lambda c, d: GridTokens(c.grid.cells, d), config=GridConfig))
VISUAL_MODES.register(VisualMode("roi_grid", ("roi", "grid")))
'''

TASK = '''
"""A toy downstream task: does the caption fit the image (no / yes), from JSON-lines files
({"id", "text", "image", "label"} per line); the recipe is in this module too."""
from rc3.config import ConfigError
from rc3.finetune.registry import DOWNSTREAM, DownstreamTask


def validate(cfg):
    if cfg.data.test_langs not in ([], ["en"]):
        raise ConfigError("data.test_langs", "toy_yesno has English test data only")


def main(argv=None):
    import json

    from rc3.finetune.classification import label_accuracy, run_classification
    from rc3.finetune.cli import parse_cli
    from rc3.finetune.datasets import TaskItem
    from rc3.finetune.trainer import FinetuneRun

    cfg, args = parse_cli("toy_yesno", argv)

    def read(value):
        lines = cfg.data_path(value).read_text().splitlines()
        return [TaskItem(r["id"], r["text"], "en", (r["image"],), r["label"]) for r in map(json.loads, lines)]

    class Task:
        name, num_labels, labels = "toy_yesno", 2, ["no", "yes"]
        train_items = staticmethod(lambda: read(cfg.data.train))
        dev_items = staticmethod(lambda: None)
        test_sets = staticmethod(lambda: {"en": read(cfg.data.test)})
        score = staticmethod(label_accuracy)

    with FinetuneRun(cfg, save_model=not args.no_save) as run:
        return run_classification(run, Task())


DOWNSTREAM.register(DownstreamTask(
    "toy_yesno", "Finetune RC3 on a toy yes/no set.", {"lr": 3e-4, "batch_size": 4, "epochs": 1, "max_text_len": 24},
    f"{__name__}:main", "rc3.finetune.heads:ClassificationModel", validate=validate, primary_metric="accuracy",
    labels=("no", "yes")))
'''

RECORDS = {OBJECTIVES: "tr_norm", CORPORA: "dq", FRONT_ENDS: "grid", VISUAL_MODES: "roi_grid", DOWNSTREAM: "toy_yesno"}


@pytest.fixture
def plugin(tmp_path):
    """The package's name; its modules: objective, corpus, front_end, task. Their records are removed after."""
    name = f"rc3_toy_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / "plugins" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Toy plugins for tests/test_registries.py."""\n')
    for module, text in {"objective": OBJECTIVE, "corpus": CORPUS, "front_end": FRONT_END, "task": TASK}.items():
        (pkg / f"{module}.py").write_text(textwrap.dedent(text).lstrip())
    sys.path.insert(0, str(pkg.parent))
    try:
        yield name
    finally:
        sys.path.remove(str(pkg.parent))
        for registry, record in RECORDS.items():
            if record in registry:
                registry.unregister(record)
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


# ---- objectives -----------------------------------------------------------------------------------

def pretraining_step(cfg, batches):
    """One tiny pretraining step (losses, backward, AdamW step) from a fixed initialisation."""
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = compute_losses(model, batches, cfg.objectives, ObjectiveState.create(), torch.Generator().manual_seed(0))
    out.loss.backward()
    optimizer.step()
    return model, out


def test_a_plugin_objective_is_off_until_switched_on_then_trains(plugin):
    with pytest.raises(ConfigError, match="objectives.tr_norm: unknown key"):
        load_config(TINY, ["objectives.tr_norm.enabled=true"])
    off = load_config(TINY, [f"plugins=[{plugin}.objective]"])
    assert "tr_norm" in OBJECTIVES and off.objectives.enabled() == PAPER and not off.objectives.tr_norm.enabled
    on = load_config(TINY, [f"plugins=[{plugin}.objective]", "objectives.tr_norm.enabled=true",
                            "objectives.tr_norm.weight=0.5", "objectives.tr_norm.target=2.0"])
    assert on.objectives.enabled() == [*PAPER, "tr_norm"] and on.objectives.tr_norm.target == 2.0
    assert on.plugins == [f"{plugin}.objective"]
    with pytest.raises(ConfigError, match="objectives.tr_norm.target: expected float"):
        load_config(TINY, [f"plugins=[{plugin}.objective]", "objectives.tr_norm.target=[1]"])
    # a section that does not say `enabled` keeps its objective's default: the paper's stay on
    partial = load_config(TINY, [f"plugins=[{plugin}.objective]", "objectives.itm.weight=0.5",
                                 "objectives.tr_norm.target=3.0"])
    assert partial.objectives.enabled() == PAPER and partial.objectives.itm.weight == 0.5

    batches = random_objective_batches(VOCAB, batch_size=4, seed=3)
    assert batches["tr_norm"] is batches["xtcl"]  # the harness hands it its stream's corpus batch
    model_off, out_off = pretraining_step(off, batches)
    model_on, out_on = pretraining_step(on, batches)
    assert "tr_norm" not in out_off.parts and "tr_norm_mean" not in out_off.extras
    assert "tr_norm" in out_on.parts and "tr_norm_mean" in out_on.extras
    # the reference, from the formula on the raw batch tensors of the same initial model
    torch.manual_seed(0)
    fresh = RC3Model.from_config(tiny_model_config(), VOCAB)
    with torch.no_grad():
        tr = fresh.tr(batches["xtcl"]["src_ids"], batches["xtcl"]["src_mask"])
        ref = ((tr.norm(dim=-1) - 2.0) ** 2).mean()
    torch.testing.assert_close(out_on.parts["tr_norm"], ref)
    for name in PAPER:  # it runs after the paper's objectives and leaves their losses (and draws) alone
        assert torch.equal(out_on.parts[name], out_off.parts[name])
    torch.testing.assert_close(out_on.loss.detach(), out_off.loss.detach() + 0.5 * ref)
    moved = [n for (n, a), b in zip(model_on.named_parameters(), model_off.parameters()) if not torch.equal(a, b)]
    assert "mbart.model.encoder.layers.0.fc1.weight" in moved  # its gradient took part in the step


def test_a_contrastive_objective_gets_its_p_avg_tracker():
    def loss(ctx, batch):
        return ObjectiveResult(torch.zeros(()))

    with OBJECTIVES.temporarily(Objective("toy_contrastive", stream="dt", loss=loss, p_avg_group="toy")):
        assert set(ObjectiveState.create().trackers) == {"xtcl", "rxvtcl", "toy"}
        assert set(ObjectiveState.create(p_avg_scope="per_corpus").trackers) == {
            "xtcl", "rxvtcl_ds", "rxvtcl_dw", "toy_contrastive"}
    assert set(ObjectiveState.create().trackers) == {"xtcl", "rxvtcl"}


def test_an_objective_on_a_new_stream_requires_its_corpus_shards():
    def loss(ctx, batch):
        return ObjectiveResult(torch.zeros(()))

    only_toy = [f"objectives.{n}.enabled=false" for n in PAPER] + ["objectives.dw_norm.enabled=true"]
    with STREAMS.temporarily(Stream("dw_texts", "dw")), \
            OBJECTIVES.temporarily(Objective("dw_norm", stream="dw_texts", loss=loss)):
        with pytest.raises(ConfigError, match=r"data.dw_shards: required by the enabled objective\(s\) dw_norm"):
            load_config(None, only_toy)
        cfg = load_config(None, [*only_toy, "data.dw_shards=x-{0..1}.tar"])
        assert cfg.objectives.enabled() == ["dw_norm"]
        with pytest.raises(ConfigError, match="every objective is switched off"):
            load_config(None, [*only_toy[:-1], "data.dw_shards=x-{0..1}.tar"])


def test_registry_errors_name_what_is_registered():
    with pytest.raises(KeyError, match="unknown pretraining objective 'nope'; registered: mclm, itm, xtcl"):
        OBJECTIVES.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        OBJECTIVES.register(OBJECTIVES.get("itm"))
    with pytest.raises(ValueError, match="must be a Python identifier"):
        OBJECTIVES.register(Objective("r-xvtcl", stream="dt", loss=lambda ctx, b: ObjectiveResult(0)))
    with pytest.raises(ConfigError, match=r"^config error: plugins: cannot import 'no_such_plugin_module' "
                                          r"\(ModuleNotFoundError: .*\); put its package on PYTHONPATH"):
        load_config(TINY, ["plugins=[no_such_plugin_module]"])
    with pytest.raises(ConfigError, match="plugins: expected a list of module names"):
        import_plugins("mypkg.objective")


def test_a_registry_imports_every_module_of_its_package(tmp_path):
    """Built-ins are found without a list: the registry imports its package and each module in it."""
    name = f"rc3_builtin_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    registry: Registry = Registry("toy record", packages=(name,))
    (pkg / "__init__.py").write_text("")
    for record in ("alpha", "beta"):
        (pkg / f"{record}.py").write_text(
            f"from types import SimpleNamespace\nfrom {__name__} import REGISTRY_UNDER_TEST as R\n"
            f"R[0].register(SimpleNamespace(name={record!r}))\n")
    REGISTRY_UNDER_TEST[:] = [registry]
    sys.path.insert(0, str(tmp_path))
    try:
        assert registry.names() == ["alpha", "beta"]
    finally:
        sys.path.remove(str(tmp_path))
        REGISTRY_UNDER_TEST.clear()
    assert OBJECTIVES.packages == STREAMS.packages == ("rc3.pretrain.objectives",)
    assert CORPORA.packages == ("rc3.data.corpora",) and DOWNSTREAM.packages == ("rc3.finetune.tasks",)
    assert FRONT_ENDS.packages == VISUAL_MODES.packages == ("rc3.modeling.visual",)


REGISTRY_UNDER_TEST: list[Registry] = []


# ---- corpora -------------------------------------------------------------------------------------

def _write_qa_shard(path: Path, n: int, broken: set[int]) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            body = b"{not json" if i in broken else json.dumps({"q": f"question {i}?", "a": f"answer {i}"}).encode()
            info = tarfile.TarInfo(f"{i:06d}.qa.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_a_plugin_corpus_streams_counts_faults_and_gets_config_keys(plugin, tmp_path):
    from rc3.data.pipeline import make_pipeline
    from rc3.tools import dataset_stats

    shard = tmp_path / "dq-000000.tar"
    _write_qa_shard(shard, 12, broken={5})
    with pytest.raises(ConfigError, match="data.dq_shards: unknown key"):
        load_config(None, [*PAPER_SHARDS, "data.dq_shards=x.tar"])
    cfg = load_config(None, [*PAPER_SHARDS, f"plugins=[{plugin}.corpus]", f"data.dq_shards={shard}"])
    assert cfg.data.shards("dq") == str(shard) and cfg.data.dq_sources == []
    collator = sys.modules[f"{plugin}.corpus"].QACollator()
    loader = make_pipeline("dq", cfg.data.shards("dq"), 4, collator, skip_budget=0.5, shuffle_buffer=0, batches_per_epoch=2)
    keys = sorted(k for batch in loader for k in batch["keys"])
    assert len(keys) == 8 and "000005" not in keys
    assert loader.skips.as_dict() == {"bad_json": 1}
    report = dataset_stats.collect([shard])
    assert report["samples"] == {"dq": 11} and report["languages"] == {"en": 11}
    assert report["broken_samples"] == {"qa.json: not valid UTF-8 JSON": 1}


# ---- visual front ends ---------------------------------------------------------------------------

def test_a_plugin_front_end_is_built_only_where_used_and_encodes(plugin):
    from rc3.modeling.visual_inputs import VisualSource

    with pytest.raises(ConfigError, match="model.visual_mode: 'roi_grid' is not one of roi, patch, combined"):
        load_config(None, [*PAPER_SHARDS, "model.visual_mode=roi_grid"])
    plain = load_config(None, [*PAPER_SHARDS, *TINY_MODEL, f"plugins=[{plugin}.front_end]"])
    assert plain.model.front_ends == ["roi", "patch"]  # Ds ROIs and Dw patches: not the registered grid
    assert not hasattr(RC3Model.from_config(plain.model, VOCAB).visual, "grid")
    cfg = load_config(None, [*PAPER_SHARDS, *TINY_MODEL, f"plugins=[{plugin}.front_end]", "model.visual_mode=roi_grid",
                             "model.grid.cells=3"])
    assert cfg.model.front_ends == ["roi", "patch", "grid"] and cfg.model.grid.cells == 3
    torch.manual_seed(0)
    model = RC3Model.from_config(cfg.model, VOCAB)
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
    roi_only = RC3Model.from_config(tiny_model_config(front_ends=[]), VOCAB)
    assert roi_only.visual.front_ends == ["roi"] and not hasattr(roi_only.visual, "patch")
    with pytest.raises(ValueError, match="visual mode 'roi_grid' needs the 'grid' front end, which this model does not hold"):
        roi_only.encode(ids, torch.ones(2, 6, dtype=torch.bool), visual, "roi_grid")


def _outputs(model: RC3Model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    visual = {"roi": torch.randn(2, 36, 2048, generator=g), "boxes": torch.rand(2, 36, 5, generator=g),
              "pixels": torch.rand(2, 3, 224, 224, generator=g)}
    ids = torch.randint(4, 200, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        return torch.cat([model.vtr(ids, mask, visual, "roi"), model.vtr(ids, mask, visual, "patch")])


def test_saved_models_load_after_a_front_end_is_registered(plugin, tmp_path, caplog):
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), VOCAB).eval()
    model.save_pretrained(tmp_path / "now")
    import_plugins([f"{plugin}.front_end"])
    assert "grid" in FRONT_ENDS
    loaded = RC3Model.from_pretrained(tmp_path / "now").eval()
    assert loaded.visual.front_ends == ["roi", "patch"]
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)

    # rc3_config.json as written before models recorded their front ends (they held roi and patch)
    model.save_pretrained(tmp_path / "old")
    meta_file = tmp_path / "old" / "rc3_config.json"
    meta = json.loads(meta_file.read_text())
    del meta["model"]["front_ends"]
    meta_file.write_text(json.dumps(meta))
    old = RC3Model.from_pretrained(tmp_path / "old").eval()
    assert old.visual.front_ends == ["roi", "patch"]
    torch.testing.assert_close(_outputs(old), _outputs(model), rtol=0, atol=0)

    # a model holding ROI only, asked for patches: its weights load, the patch front end starts fresh
    torch.manual_seed(0)
    RC3Model.from_config(tiny_model_config(front_ends=[]), VOCAB).save_pretrained(tmp_path / "roi")
    with caplog.at_level(logging.WARNING, logger="rc3.modeling.model"):
        patch = RC3Model.from_pretrained(tmp_path / "roi", visual_mode="patch")
    assert patch.visual.front_ends == ["roi", "patch"]
    assert "holds no trained weights for the visual front end(s) patch" in caplog.text


# ---- downstream tasks ----------------------------------------------------------------------------

def _write_yesno_data(root: Path) -> None:
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    with h5py.File(root / "features.h5", "w") as f:
        for i in range(6):
            g = f.create_group(f"img{i}")
            g.create_dataset("features", data=rng.random((4, 2048), dtype=np.float32))
            xy = rng.random((4, 2)) * 40
            g.create_dataset("boxes", data=np.concatenate([xy, xy + 20], axis=1).astype(np.float32))
            g.create_dataset("img_w", data=64)
            g.create_dataset("img_h", data=64)
    for split, n in (("train", 8), ("test", 6)):
        rows = [{"id": f"{split}{i}", "text": ["a red dog", "two cats"][i % 2], "image": f"img{i % 6}", "label": i % 2}
                for i in range(n)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow  # a tokenizer trained on real text, then a finetuning run through the harness
def test_a_plugin_downstream_task_trains_and_evaluates_through_the_harness(plugin, tmp_path, tokenizer, tokenizer_dir):
    from rc3.finetune import cli
    from rc3.finetune.config import finetune_config_from_dict

    _write_yesno_data(tmp_path)
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(front_ends=[]), tokenizer.vocab_size, tokenizer.pad_id,
                                 tokenizer.bos_id, tokenizer.eos_id)
    model.save_pretrained(tmp_path / "init", tokenizer_dir=tokenizer_dir)
    base = {"plugins": [f"{plugin}.task"], "data": {"root": str(tmp_path), "train": "train.jsonl", "test": "test.jsonl",
                                                    "features": ["features.h5"], "num_workers": 0}}
    with pytest.raises(ConfigError, match="'toy_yesno' is not one of"):
        finetune_config_from_dict({k: v for k, v in base.items() if k != "plugins"}, "toy_yesno")
    assert "toy_yesno" not in DOWNSTREAM

    # the command line finds the task through the config's plugins (nothing has imported the module yet)
    config = tmp_path / "toy_yesno.yaml"
    config.write_text(json.dumps(base))
    out = tmp_path / "out"
    cli.main(["toy_yesno", "--config", str(config), "--init", str(tmp_path / "init"), "--output-dir", str(out),
              "--set", "train.micro_batch_size=2", "--set", "eval.batch_size=4", "--set", "train.log_every=1"])
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["en"] and results["en"]["n"] == 6 and 0.0 <= results["en"]["accuracy"] <= 100.0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2]  # 8 examples, 4 per step, one epoch

    cfg = finetune_config_from_dict(base, "toy_yesno")
    assert (cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs, cfg.data.max_text_len) == (3e-4, 4, 1, 24)
    with pytest.raises(ConfigError, match="toy_yesno has English test data only"):
        finetune_config_from_dict(base, "toy_yesno", ["data.test_langs=[de]"])
    head = json.loads((out / "model" / "task_head.json").read_text())
    assert head["task"] == "toy_yesno" and head["labels"] == ["no", "yes"]
