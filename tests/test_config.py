"""Config loading: YAML + dotted overrides, strict validation with the offending key named."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from rc3.config import ConfigError, save_config
from rc3.pretrain.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARDS = ["data.ds_shards=a.tar", "data.dw_shards=b.tar", "data.dt_shards=c.tar"]


@pytest.mark.parametrize("name", ["paper", "synthetic-tiny"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.d_model in (1024, 64)


def test_paper_config_has_the_paper_sizes():
    m = load_config(REPO / "configs" / "paper.yaml").model
    assert (m.encoder_layers, m.decoder_layers, m.d_model, m.attention_heads) == (12, 12, 1024, 16)
    assert (m.num_regions, m.roi_dim, m.image_size, m.patch_size) == (36, 2048, 224, 32)


def test_dotted_override_parses_types():
    cfg = load_config(None, SHARDS + ["model.d_model=64", "model.attention_heads=4", "objectives.kl=false",
                                      "data.langs=[en, de]", "optim.lr=1e-4"])
    assert cfg.model.d_model == 64 and cfg.objectives.kl is False and cfg.data.langs == ["en", "de"]
    assert cfg.optim.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("override,key,words", [
    ("model.d_modle=64", "model.d_modle", "unknown key"),
    ("training.steps=3", "training", "unknown key"),
    ("model.d_model=abc", "model.d_model", "expected int"),
    ("objectives.kl=3", "objectives.kl", "expected bool"),
    ("model.visual_mode=grid", "model.visual_mode", "not one of roi, patch, combined"),
    ("data.langs=[en, xx]", "data.langs[1]", "unknown language 'xx'"),
    ("train.global_batch_size=100", "train.global_batch_size", "not divisible"),
    ("model.attention_heads=5", "model.attention_heads", "not divisible"),
    ("train.micro_batch_size=0", "train.micro_batch_size", "must be positive"),
    # reading switches of the paper (FIDELITY.md): an unknown value names the key and the choices
    ("objectives.rxvtcl_others=nearest", "objectives.rxvtcl_others", "not one of shift, random"),
    ("objectives.itm_negatives=hard", "objectives.itm_negatives", "not one of shift, random"),
    ("objectives.mlm_count=poisson", "objectives.mlm_count", "not one of exact, bernoulli"),
    ("objectives.mlm_replace=random", "objectives.mlm_replace", "not one of mask, bert"),
    ("objectives.p_avg_scope=global", "objectives.p_avg_scope", "not one of shared, per_corpus"),
    ("model.roi_projection=conv", "model.roi_projection", "not one of fc_boxes_norm, fc"),
    ("model.text_positions=shared", "model.text_positions", "not one of after_visual, from_zero"),
    ("optim.name=sgd", "optim.name", "not one of adamw, adam"),
    ("optim.name=adam", "optim.weight_decay", "plain Adam"),
    ("optim.grad_clip=-1", "optim.grad_clip", "must be >= 0"),
    # K other triplets need K + 1 triplets per micro-batch
    ("objectives.rxvtcl_other_triplets=32", "objectives.rxvtcl_other_triplets", "at least 33 triplets"),
])
def test_bad_values_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, SHARDS + [override])
    assert err.value.key == key
    assert words in str(err.value) and key in str(err.value)


def test_batch_identity_with_world_size():
    cfg = load_config(None, SHARDS + ["train.global_batch_size=64", "train.micro_batch_size=8"])
    assert cfg.grad_accum_steps(world_size=2) == 4
    with pytest.raises(ConfigError, match="micro_batch_size x world_size = 8 x 3"):
        cfg.grad_accum_steps(world_size=3)


def test_missing_shards_for_enabled_task():
    with pytest.raises(ConfigError, match="data.dt_shards: required by the enabled objective"):
        load_config(None, SHARDS[:2])
    cfg = load_config(None, SHARDS[:2] + ["objectives.xtcl.enabled=false"])
    assert not cfg.objectives.xtcl.enabled


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "synthetic-tiny.yaml", ["model.d_model=32"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["model"]["d_model"] == 32
    assert load_config(path) == cfg


def test_demo_config_is_the_tiny_config_twice_as_wide():
    """`make demo` pretrains configs/synthetic-demo.yaml: the tests' tiny config with d_model 128 and the
    throughput levers that keep the eager arithmetic (no compile, no padding to fixed shapes), nothing else."""
    tiny = load_config(REPO / "configs" / "synthetic-tiny.yaml")
    demo = load_config(REPO / "configs" / "synthetic-demo.yaml")
    assert (demo.model.d_model, demo.model.ffn_dim, demo.model.patch_dim) == (128, 256, 128)
    assert tiny.model.dropout == 0.0  # with dropout, merged encoder calls would draw other masks
    levers = dataclasses.replace(tiny.perf, flat_params=True, fuse_encoder_calls=True, sync_free=True, sync_free_step=True)
    wider = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, d_model=128, ffn_dim=256, patch_dim=128),
                                train=dataclasses.replace(tiny.train, run_dir=demo.train.run_dir), perf=levers)
    assert demo == wider


def test_rxvtcl_k_against_a_task_batch_size():
    with pytest.raises(ConfigError, match="rxvtcl_dw gets 2") as err:
        load_config(None, SHARDS + ["objectives.rxvtcl_other_triplets=2", "objectives.rxvtcl_dw.batch_size=2"])
    assert err.value.key == "objectives.rxvtcl_other_triplets"
    ok = load_config(None, SHARDS + ["objectives.rxvtcl_other_triplets=2", "objectives.rxvtcl_dw.batch_size=3"])
    assert ok.objectives.rxvtcl_other_triplets == 2


def test_paper_configs_and_their_readings():
    """configs/paper.yaml: our defaults with the paper's global XTCL batch; paper-literal.yaml: the
    most literal reading of every switch FIDELITY.md lists."""
    paper = load_config(REPO / "configs" / "paper.yaml")
    assert paper.objectives.xtcl_gather and paper.optim.name == "adamw"
    literal = load_config(REPO / "configs" / "paper-literal.yaml")
    o, opt = literal.objectives, literal.optim
    assert o.xtcl_gather and o.rxvtcl_other_triplets == 1 and o.rxvtcl_others == "random"
    assert (o.mlm_count, o.mlm_replace, o.itm_negatives) == ("bernoulli", "mask", "random")
    assert not o.detach_lambda and not o.detach_p_tr
    assert (opt.name, opt.lr, opt.weight_decay, opt.warmup_steps, opt.schedule, opt.grad_clip) == \
        ("adam", 5e-5, 0.0, 0, "constant", 0.0)
    assert (literal.train.global_batch_size, literal.train.total_steps) == (1024, 100_000)
    assert paper.model.roi_projection == "fc_boxes_norm" and literal.model.roi_projection == "fc"
    assert dataclasses.replace(literal.model, roi_projection=paper.model.roi_projection) == paper.model
    assert literal.data == paper.data


def test_base_configs_merge_and_fail_clearly(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {d_model: 64, attention_heads: 4}\n" + "data: {ds_shards: a.tar, "
                                     "dw_shards: b.tar, dt_shards: c.tar}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {d_model: 128}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.model.d_model, cfg.model.attention_heads, cfg.data.ds_shards) == (128, 4, "a.tar")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="base: no such file"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: e.yaml\n")
    (tmp_path / "e.yaml").write_text("base: d.yaml\n")
    with pytest.raises(ConfigError, match="cycle of base configs"):
        load_config(tmp_path / "d.yaml")
