"""perf.fuse_encoder_calls (rc3/pretrain/encode_requests.py): the objectives' encoder calls of one kind merged
into one call. The reference is the plain path, each objective calling the encoder itself, in float64
without dropout (merged calls draw other dropout masks)."""
from __future__ import annotations

import pytest
import torch
from tiny import random_objective_batches, tiny_model_config

from rc3.modeling import RC3Model
from rc3.pretrain.config import ObjectivesConfig
from rc3.pretrain.encode_requests import EncodeRequest, encode_together, run_merged
from rc3.pretrain.objectives import ObjectiveState, compute_losses

VOCAB = 300


def _model() -> RC3Model:
    torch.manual_seed(0)
    return RC3Model.from_config(tiny_model_config(dropout=0.0, image_size=64, num_regions=4), VOCAB).double()


def _batches(seed: int = 3) -> dict:
    b = random_objective_batches(VOCAB, batch_size=3, text_len=7, seed=seed, image_size=64, regions=4)
    return {k: {kk: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for kk, v in bb.items()}
            for k, bb in b.items()}


class Calls:
    """Counts the model's encoder and visual front-end calls."""

    def __init__(self, model: RC3Model) -> None:
        self.encode = self.visual = 0
        enc, vis = model.encode, model.visual.forward

        def encode(*a, **k):
            self.encode += 1
            return enc(*a, **k)

        def visual(*a, **k):
            self.visual += 1
            return vis(*a, **k)

        model.encode, model.visual.forward = encode, visual


@pytest.mark.parametrize("others", ["shift", "random"])
def test_merged_calls_give_the_plain_losses_and_gradients(others):
    model = _model()
    cfg = ObjectivesConfig(rxvtcl_other_triplets=1, rxvtcl_others=others, itm_negatives="random")
    calls = Calls(model)
    runs = []
    for fuse in (False, True):
        model.zero_grad()
        calls.encode = calls.visual = 0
        out = compute_losses(model, _batches(), cfg, ObjectiveState.create(), torch.Generator().manual_seed(1),
                             None, fuse)
        out.loss.backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                     (calls.encode, calls.visual)))
    (plain, g_plain, n_plain), (merged, g_merged, n_merged) = runs
    # plain: MCLM, ITM, XTCL, R-XVtCL Ds, R-XVtCL Dw and its text-only P_tr; 4 visual passes (3 ROI, 1 patch)
    # merged: one ROI call for MCLM, ITM and R-XVtCL Ds; XTCL; R-XVtCL Dw; P_tr; 2 visual passes
    assert n_plain == (6, 4) and n_merged == (4, 2)
    assert plain.parts.keys() == merged.parts.keys() and len(plain.parts) == 5
    for key in [*plain.parts, *plain.extras]:
        a = plain.parts.get(key, plain.extras.get(key))
        b = merged.parts.get(key, merged.extras.get(key))
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (key, a, b)
    assert g_plain.keys() == g_merged.keys()
    scale = max(float(g.abs().max()) for g in g_plain.values())
    for name, g in g_plain.items():  # relative to the largest gradient: attention's key biases get ~1e-20 either way
        assert float((g - g_merged[name]).abs().max()) <= 1e-10 * scale, name


def test_encode_together_gives_each_request_its_own_call():
    model = _model().eval()
    g = torch.Generator().manual_seed(0)
    images_a = {"roi": torch.randn(2, 4, 2048, generator=g, dtype=torch.float64),
                "boxes": torch.rand(2, 4, 5, generator=g, dtype=torch.float64), "roi_mask": torch.ones(2, 4, dtype=torch.bool)}
    images_b = {k: v[:1].clone() + (0.5 if v.is_floating_point() else 0) for k, v in images_a.items()}
    a = EncodeRequest(torch.randint(3, VOCAB, (3, 5), generator=g), torch.ones(3, 5, dtype=torch.long), images_a, "roi",
                      torch.tensor([1, 0, 1]))
    mask_b = torch.ones(2, 8, dtype=torch.long)
    mask_b[1, 6:] = 0  # a padded text
    b = EncodeRequest(torch.randint(3, VOCAB, (2, 8), generator=g), mask_b, images_b, "roi", torch.tensor([0, 0]))
    together = encode_together(model, [a, b])
    for request, got in zip([a, b], together):
        want = model.encode(request.input_ids, request.attention_mask, request.visual, "roi", request.visual_index)
        assert got.hidden.shape == want.hidden.shape and got.text_start == want.text_start
        assert torch.equal(got.mask, want.mask)
        real = want.mask.bool()
        assert torch.allclose(got.hidden[real], want.hidden[real], rtol=1e-10, atol=1e-12)


def test_requests_of_other_kinds_are_not_merged_and_plain_results_pass_through():
    model = _model()
    calls = Calls(model)
    ids, mask = torch.randint(3, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.long)

    def objective(grad: bool):
        with torch.set_grad_enabled(grad):
            request = EncodeRequest(ids, mask)  # text only; the request keeps the gradient mode it was made in
        enc = yield request
        return enc.hidden.requires_grad

    got = run_merged(model, {"a": objective(True), "b": objective(False), "c": objective(True), "plain": 7})
    assert got == {"a": True, "b": False, "c": True, "plain": 7}
    assert calls.encode == 2  # a and c together, b alone
