"""perf.flat_params (rc3/pretrain/flat_params.py): the model's weights as one flat parameter per optimizer
group. The references are the plain model (a copy made before wrapping), the decay rule written out
from the parameter names and shapes, and DeepSpeed's own files; the engine-level checks run in
tests/flat_params_probe.py (one CPU rank in its own process)."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from engine_fixtures import free_port
from procs import run_bounded
from tiny import random_objective_batches, tiny_model_config

from rc3.config import ConfigError
from rc3.modeling import RC3Model
from rc3.pretrain.config import ObjectivesConfig, load_config
from rc3.pretrain.engine import resolve_ds_config
from rc3.pretrain.flat_params import FlatParameters, unflatten
from rc3.pretrain.nonfinite import GradientWatch
from rc3.pretrain.objectives import ObjectiveState, compute_losses

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300


def _models(dropout: float = 0.1) -> tuple[RC3Model, RC3Model]:
    """Two equal tiny models: the reference and the one to wrap."""
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(dropout=dropout, image_size=64, num_regions=4), VOCAB)
    return copy.deepcopy(model), model


def _model_pair(weight_decay: float = 0.01) -> tuple[RC3Model, RC3Model, FlatParameters]:
    plain, model = _models()
    return plain, model, FlatParameters(model, weight_decay)


def _loss(module: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    cfg = ObjectivesConfig(rxvtcl_other_triplets=1)
    batches = random_objective_batches(VOCAB, batch_size=3, text_len=7, seed=3, image_size=64, regions=4)
    torch.manual_seed(seed)  # the same dropout draws on both paths
    return module(compute_losses, batches, cfg, ObjectiveState.create(), torch.Generator().manual_seed(1)).loss


def test_flat_model_gives_the_plain_model_losses_and_gradients():
    plain, model, flat = _model_pair()
    plain.train(), flat.train()
    a, b = _loss(plain), _loss(flat)
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    names = [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in flat.named_parameters()] == ["flat.0", "flat.1"]
    assert all(p.grad is None for p in model.parameters())  # the gradients went to the flat tensors only
    got = {}
    for group, f in zip(flat.layout, flat.flat):
        for (name, shape), piece in zip(group, f.grad.split([torch.Size(s).numel() for _, s in group])):
            got[name] = piece.view(shape)
    assert sorted(got) == sorted(names)
    for name, p in plain.named_parameters():
        want = p.grad if p.grad is not None else torch.zeros_like(p)  # unused in this forward: zero in the flat grad
        assert torch.equal(got[name], want), name


def test_groups_follow_the_decay_rule_and_tied_weights_are_one_tensor():
    plain, _, flat = _model_pair(weight_decay=0.05)
    named = list(plain.named_parameters())  # named_parameters lists a tied weight once
    decay = [n for n, p in named if p.ndim >= 2 and "norm" not in n.lower()]
    exempt = [n for n, p in named if not (p.ndim >= 2 and "norm" not in n.lower())]
    assert [[n for n, _ in g] for g in flat.layout] == [decay, exempt]
    assert [g["weight_decay"] for g in flat.optimizer_groups()] == [0.05, 0.0]
    assert [f.numel() for f in flat.flat] == [sum(dict(named)[n].numel() for n in g) for g in (decay, exempt)]
    # the shared embedding, both embed_tokens and the LM head are one weight: one slice of flat.0
    assert "mbart.model.shared.weight" in decay and not any("embed_tokens" in n or "lm_head" in n for n in decay)
    with torch.no_grad():
        flat.flat[0].zero_()
    for m in (flat.model.mbart.lm_head, flat.model.mbart.model.encoder.embed_tokens, flat.model.mbart.model.decoder.embed_tokens):
        assert not m.weight.any()  # every alias reads the flat storage


def test_state_dict_is_the_models_and_load_writes_the_flat_storage():
    plain, model, flat = _model_pair()
    assert list(flat.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in flat.state_dict().items())
    assert [n for n, _ in flat.named_buffers()] == [n for n, _ in plain.named_buffers()]
    torch.manual_seed(5)
    other = RC3Model.from_config(tiny_model_config(dropout=0.1, image_size=64, num_regions=4), VOCAB).state_dict()
    flat.load_state_dict(other)
    for group, f in zip(flat.layout, flat.flat):  # the flat tensors hold the loaded weights, in layout order
        assert torch.equal(f.detach(), torch.cat([other[n].reshape(-1) for n, _ in group]))
    with pytest.raises(ValueError, match="assign=True"):
        flat.load_state_dict(other, assign=True)


def test_unflatten_splits_by_the_layout_and_names_a_bad_layout(tmp_path):
    plain, _, flat = _model_pair()
    layout = tmp_path / "flat_params.json"
    layout.write_text(flat.layout_json())
    state = {f"flat.{i}": f.detach().clone() for i, f in enumerate(flat.flat)}
    state["mbart.final_logits_bias"] = torch.ones(1, VOCAB)  # a buffer passes through
    out = unflatten(state, layout)
    for name, p in plain.named_parameters():
        assert torch.equal(out[name], p.detach()), name
    assert torch.equal(out["mbart.final_logits_bias"], torch.ones(1, VOCAB))
    with pytest.raises(ValueError, match="flat_params.json.*cannot read"):
        unflatten(state, tmp_path / "missing" / "flat_params.json")
    short = json.loads(layout.read_text())
    short["flat"][0]["tensors"] = short["flat"][0]["tensors"][1:]
    layout.write_text(json.dumps(short))
    with pytest.raises(ValueError, match="flat.0 holds"):
        unflatten(state, layout)


def test_gradient_watch_sees_a_nan_through_the_flat_tensors():
    _, _, flat = _model_pair()
    watch = GradientWatch(flat)
    loss = _loss(flat)
    loss.backward()
    assert watch.take() is False
    flat.zero_grad()
    from rc3.fault_injection import poison_gradient

    poison_gradient(_loss(flat), flat).backward()
    assert watch.take() is True


def test_zero3_is_refused_before_any_work():
    cfg = load_config(str(REPO / "configs/paper.yaml"), ["perf.flat_params=true", "train.deepspeed_config="
                                                          + str(REPO / "ds_configs/zero3_bf16.json")])
    with pytest.raises(ConfigError, match="perf.flat_params.*stage 3"):
        resolve_ds_config(cfg, 32, True)


@pytest.mark.slow(seconds=25)
def test_engine_trains_saves_converts_and_resumes_as_the_plain_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = run_bounded([sys.executable, str(REPO / "tests" / "flat_params_probe.py"), "--out", str(tmp_path)],
                       timeout=600, waiting_for="the flat-parameter probe (two one-rank engines, 5 steps each)",
                       cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert r["flat_params"] == ["flat.0", "flat.1"]
    # The same forward and gradients; the global norm for clipping sums 2 tensors instead of 530, which
    # may change its last bit (equal in the runs so far): 1e-6 relative, not equality.
    for a, b in zip(r["plain"], r["flat"], strict=True):
        assert a.keys() == b.keys() and "kl" in a
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-6 * abs(a[key]) + 1e-9, (key, a[key], b[key])
    assert r["weights_max_diff"] <= 1e-6
    assert r["converted_keys_missing"] == [] and r["converted_max_diff"] == 0.0
    assert r["resumed"] == r["continued"]  # bit-exact resume
    assert "perf.flat_params=true" in r["plain_from_flat_error"] and "\n" not in r["plain_from_flat_error"]


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("scope", ["layers", "passes"])
def test_compiled_flat_model_trains_as_the_eager_model_without_recompiling(scope):
    """perf.compile with perf.flat_params: the compiled modules read views that are new tensors every forward;
    dynamo must take them as inputs (no recompiles) and give the eager losses (aot_eager: forward and backward
    traced, no kernels generated)."""
    from torch._dynamo.utils import counters

    from rc3.pretrain import perf

    plain, model = _models(dropout=0.0)  # compiled dropout draws other numbers than eager
    perf.compile_model(model, scope, backend="aot_eager")
    flat = FlatParameters(model, 0.01)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, flat)]
    recompiles = []
    for _ in range(3):
        losses = []
        for m, opt in zip((plain, flat), opts):
            loss = _loss(m)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
        recompiles.append(sum(counters["recompiles"].values()))
    assert recompiles[-1] == recompiles[0], recompiles  # nothing recompiled after the first step


def test_frozen_weights_stay_out_and_an_engines_conversion_reaches_every_tensor():
    plain, model = _models()
    for p in model.visual.parameters():
        p.requires_grad_(False)
    flat = FlatParameters(model, 0.01)
    frozen = {n for n, p in plain.named_parameters() if n.startswith("visual.")}
    assert frozen and not frozen & {n for g in flat.layout for n, _ in g}
    flat.double()  # what an engine's .to(...) / .bfloat16() does, through nn.Module._apply
    assert {t.dtype for t in [*flat.state_dict().values()] if t.is_floating_point()} == {torch.float64}
    assert all(f.dtype == torch.float64 for f in flat.flat)
    assert flat.flat[0].data_ptr() == model.mbart.model.shared.weight.data_ptr()  # still aliases of the flat storage
    with pytest.raises(ValueError, match="no trainable parameters"):
        FlatParameters(model, 0.01)
