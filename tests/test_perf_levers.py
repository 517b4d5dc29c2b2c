"""The throughput levers (perf.*, rc3/pretrain/perf.py) give the plain path's losses and gradients.

Tolerances: the model-side levers are compared in float64, where the only differences left are
summation order (attention over extra masked keys, logits summed per chunk): |diff| <= 1e-9 x the
largest magnitude of the quantity (loss, or each parameter's gradient). torch.compile is compared in
float32 (inductor reorders and fuses reductions): <= 1e-4 relative. The chunked LM loss alone:
float64 to 1e-12.
"""
from __future__ import annotations

import pytest
import torch
from tiny import random_objective_batches, tiny_model_config

from rc3.config import ConfigError
from rc3.modeling import RC3Model, flops
from rc3.pretrain import perf
from rc3.pretrain.config import ObjectiveConfig, ObjectivesConfig, PerfConfig, load_config
from rc3.pretrain.losses import chunked_lm_cross_entropy
from rc3.pretrain.objectives import ObjectiveState, compute_losses

VOCAB = 300
TEXT_LEN = 12
OBJ = ObjectivesConfig()  # all five tasks, K = 1 shifted other, KL on


def tiny_model(dtype=torch.float64, seed=0) -> RC3Model:
    torch.manual_seed(seed)
    model = RC3Model.from_config(tiny_model_config(image_size=64, num_regions=6), VOCAB).to(dtype)
    return model


def batches(text_len: int = TEXT_LEN, seed: int = 0, dtype=torch.float64) -> dict:
    b = random_objective_batches(VOCAB, 4, text_len, seed=seed, image_size=64, regions=6)
    for batch in {id(v): v for v in b.values()}.values():
        for k in ("roi", "boxes", "pixels"):
            if k in batch:
                batch[k] = batch[k].to(dtype)
    return b


def loss_and_grads(model: RC3Model, b: dict, objectives: ObjectivesConfig = OBJ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = compute_losses(model, b, objectives, ObjectiveState.create(), torch.Generator().manual_seed(7))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, ga, b, gb, rel: float) -> None:
    assert abs(float(a) - float(b)) <= rel * abs(float(a)), (float(a), float(b))
    assert ga.keys() == gb.keys()
    overall = max(float(g.abs().max()) for g in ga.values())
    for name in ga:
        # Gradients that are zero by symmetry (attention key biases: softmax ignores a shift) are pure
        # rounding noise; they are measured against a millionth of the largest gradient instead.
        scale = ga[name].abs().max().clamp_min(1e-6 * overall)
        diff = (ga[name] - gb[name]).abs().max()
        assert diff <= rel * scale, (name, float(diff), float(scale))


# ---- the chunked LM-head loss ---------------------------------------------------------------

def reference_lm_loss(h, w, bias, labels):
    """-mean over labelled positions of log softmax(h W^T + b)[label], written from the definition."""
    logits = h.reshape(-1, h.shape[-1]) @ w.t() + bias
    logp = logits - logits.logsumexp(-1, keepdim=True)
    lab = labels.reshape(-1)
    keep = lab != -100
    picked = logp[keep.nonzero().squeeze(1), lab[keep]]
    return -picked.sum() / max(int(keep.sum()), 1)


@pytest.mark.parametrize("chunk", [1, 5, 7, 64, 1000])
def test_chunked_lm_loss_equals_full_logits(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.4] = -100
    got = chunked_lm_cross_entropy(h, w, bias, labels, chunk)
    grads = torch.autograd.grad(got * 1.7, (h, w, bias))
    want = reference_lm_loss(h, w, bias, labels)
    want_grads = torch.autograd.grad(want * 1.7, (h, w, bias))
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # all positions ignored: 0, with zero gradients (not NaN)
    none = chunked_lm_cross_entropy(h, w, bias, torch.full_like(labels, -100), chunk)
    assert float(none.detach()) == 0.0 and all(float(x.abs().sum()) == 0 for x in torch.autograd.grad(none, (h, w, bias)))


def test_chunked_lm_loss_never_holds_full_logits():
    n, v, chunk = 40, 97, 8
    h = torch.randn(n, 16, requires_grad=True)
    w = torch.randn(v, 16, requires_grad=True)
    labels = torch.randint(0, v, (n,))

    class Largest(torch.overrides.TorchFunctionMode):
        biggest = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # the weight, its transposed view and its gradient are [V, d] by nature
            if torch.is_tensor(out) and out.shape not in (w.shape, w.t().shape):
                Largest.biggest = max(Largest.biggest, out.numel())
            return out

    with Largest():
        loss = chunked_lm_cross_entropy(h, w, None, labels, chunk)
        loss.backward()
    assert Largest.biggest <= chunk * v < n * v


def test_chunked_lm_loss_errors():
    h, w = torch.randn(2, 3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="share leading dims"):
        chunked_lm_cross_entropy(h, w, None, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_lm_cross_entropy(h, w, None, torch.zeros(2, 3, dtype=torch.long), 0)


# ---- model-side levers: equal losses and gradients -------------------------------------------

@pytest.mark.parametrize("lever", ["sync_free", "lm_loss_chunk", "fixed_shapes", "all"])
def test_model_levers_equal_the_plain_path(lever):
    b = batches(text_len=9)  # natural width 9 < max_text_len 12: fixed_shapes really pads
    plain = tiny_model()
    loss, grads = loss_and_grads(plain, b)
    fast = tiny_model()
    settings = {"sync_free": dict(sync_free=True), "lm_loss_chunk": dict(lm_loss_chunk=5),
                "fixed_shapes": dict(fixed_shapes=True),
                "all": dict(sync_free=True, lm_loss_chunk=5, fixed_shapes=True)}[lever]
    cfg = PerfConfig(**settings)
    perf.apply(fast, cfg)
    fb = perf.fix_batch_shapes(b, TEXT_LEN, TEXT_LEN, 1) if cfg.fixed_shapes else b
    if cfg.fixed_shapes:
        assert fb["mclm"]["mlm_ids"].shape[1] == TEXT_LEN > b["mclm"]["mlm_ids"].shape[1]
    fast_loss, fast_grads = loss_and_grads(fast, fb)
    assert_close(loss, grads, fast_loss, fast_grads, rel=1e-9)


def test_fix_batch_shapes_pads_with_the_right_values_and_keeps_sharing():
    b = batches(text_len=5)
    fixed = perf.fix_batch_shapes(b, 8, 9, pad_id=1)
    assert fixed["mclm"] is fixed["itm"] is fixed["rxvtcl_ds"]  # one Ds batch for three tasks, as collated
    ds, raw = fixed["mclm"], b["mclm"]
    assert ds["mlm_ids"].shape == (4, 8) and ds["dec_input_ids"].shape == (4, 9)
    assert (ds["src_ids"][:, 5:] == 1).all() and not ds["src_mask"][:, 5:].any()
    assert (ds["mlm_labels"][:, 5:] == -100).all() and (ds["dec_labels"][:, 5:] == -100).all()
    assert torch.equal(ds["src_ids"][:, :5], raw["src_ids"]) and torch.equal(ds["roi"], raw["roi"])
    with pytest.raises(ValueError, match="longer than data.max_text_len = 4"):
        perf.fix_batch_shapes(b, 4, 9, pad_id=1)


# ---- no host sync inside a micro-step ----------------------------------------------------------

def test_host_sync_counter_counts_what_waits():
    x = torch.randn(3)  # from outside the block: stands for a device tensor
    with perf.HostSyncCounter() as c:
        x.sum().item()
        bool(x[0] > 0)
        x[x > 0]  # boolean-mask indexing: the result size depends on the values
        x.cpu()
        torch.arange(4).to(x.device)  # a host-made table copied to the device (pageable)
    assert [name for name, _ in c.calls] == ["item", "__bool__", "boolean-mask indexing", "cpu device -> host",
                                             "to host -> device (pageable or blocking)"]
    with perf.HostSyncCounter() as c:
        int(torch.randint(1, 5, (1,), generator=torch.Generator().manual_seed(0)))  # a host draw: free
        (x * 2 + torch.ones(3, device=x.device)).sum()  # device work, device-made constant
        torch.arange(4).tolist()
    assert c.count == 0, c.calls


def test_no_host_sync_inside_a_micro_step():
    b = batches()
    model = tiny_model(torch.float32)
    perf.apply(model, PerfConfig(sync_free=True, lm_loss_chunk=16))
    loss_and_grads(model, b)  # first step builds the cached index tables (once per shape)
    with perf.HostSyncCounter() as c:
        loss_and_grads(model, b)
    assert c.count == 0, c.calls
    # The plain path does wait (transformers asks the host whether each batch has padding): the counter sees it.
    plain = tiny_model(torch.float32)
    loss_and_grads(plain, b)
    with perf.HostSyncCounter() as c:
        loss_and_grads(plain, b)
    assert c.count > 0 and all("masking_utils" in where for _, where in c.calls), c.calls


class _PlainEngine:
    """The part of DeepSpeed's engine interface that `train_step` uses, over plain torch (SGD without
    momentum: one optimizer step is all the test needs)."""

    def __init__(self, model):
        self.model, self.skipped_steps = model, 0
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        self.outputs = []

    def __call__(self, fn, *args):
        out = self.model(fn, *args)
        self.outputs.append(out)
        return out

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("accum", [1, 2])
def test_train_step_reads_the_metrics_once_per_optimizer_step(tmp_path, accum):
    """The training loop's step (rc3.pretrain.loop.train_step, one process) at the default settings, the
    model passing prebuilt masks (so transformers' own reads do not hide the loop's): the only host reads
    are the non-finite-loss check of each micro-step and one read of every metric sum after the last; the
    logged numbers are the host sums of each micro-step's values."""
    from types import SimpleNamespace

    from rc3.pretrain import loop
    from rc3.run_log import RunLogger

    model = tiny_model(torch.float32)
    perf.apply(model, PerfConfig(sync_free=True))
    engine = _PlainEngine(model)
    pool = [batches(seed=i, dtype=torch.float32) for i in range(accum)]
    streams = SimpleNamespace(next_batches=lambda: pool[len(engine.outputs) % accum], samples_per_step=lambda: 16)
    cfg = load_config(None, ["data.ds_shards=x", "data.dw_shards=x", "data.dt_shards=x", "data.max_text_len=12",
                             "objectives.xtcl_gather=false"])
    run = loop.Run(cfg, engine, None, streams, ObjectiveState.create(), RunLogger(tmp_path, False), None,
                   torch.device("cpu"), False, 1, accum, 0, 1, None)
    loss_and_grads(model, pool[0])  # builds the cached index tables (once per shape), as the loop's first step does
    model.zero_grad(set_to_none=True)
    with perf.HostSyncCounter() as c:
        done = loop.train_step(run)
    kinds = [kind for kind, _ in c.calls]
    assert kinds == ["item"] * accum + ["tolist"], c.calls  # isfinite per micro-step, then one read of the sums
    want: dict[str, float] = {}
    for out in engine.outputs:  # the reference: each value read on the host, summed in Python
        for k, v in {**{f"plain.{k}": v for k, v in out.plain.items()}, **out.parts, **out.extras,
                     "loss": out.loss.detach()}.items():
            want[k] = want.get(k, 0.0) + float(v)
    assert done.reduced == {k: v / accum for k, v in want.items()}
    assert {"loss", "mclm", "plain.xtcl", "kl"} <= done.reduced.keys()


def test_metric_sums_equal_host_float_sums():
    g = torch.Generator().manual_seed(0)
    steps = [{"a": torch.randn((), generator=g), "b": torch.rand((), generator=g) * 1e-3} for _ in range(5)]
    sums = perf.MetricSums()
    want: dict[str, float] = {}
    for values in steps:
        sums.add(values)
        for k, v in values.items():
            want[k] = want.get(k, 0.0) + float(v)
    got = sums.read()
    assert got == want and list(got) == ["a", "b"]  # bit for bit, in order
    assert sums.read() == {}
    # a reduction over ranks (rc3.distributed.all_reduce_sum_) sees the stacked sums before the one read
    seen = []
    sums.add({"a": torch.tensor(1.5), "b": torch.tensor(-2.0)})
    with perf.HostSyncCounter() as c:
        got = sums.read(reduce=lambda t: seen.append(t.tolist()) or t * 3)
    assert seen == [[1.5, -2.0]] and got == {"a": 4.5, "b": -6.0}
    assert [kind for kind, _ in c.calls] == ["tolist", "tolist"]  # the spy's own read, then read()'s one


# ---- FLOP counter: once per shape ----------------------------------------------------------------

def test_flop_counter_is_computed_once_per_shape():
    flops.encoder_flops.cache_clear()
    with flops.FlopCounter() as fc:
        for _ in range(3):
            flops.encoder_pass(4, 40, 1024, 4096, 12)
    # the formula of rc3/modeling/flops.py's docstring, written out: 3 passes, x3 for the backward
    want = 3 * 3 * 4 * 40 * 12 * (8 * 1024**2 + 4 * 1024 * 4096 + 4 * 40 * 1024)
    assert fc.flops == want
    info = flops.encoder_flops.cache_info()
    assert info.misses == 1 and info.hits == 2


def test_chunked_path_counts_the_same_flops():
    b = batches()
    counts = []
    for chunk in (0, 7):
        model = tiny_model(torch.float32)
        model.lm_loss_chunk = chunk
        with flops.FlopCounter() as fc:
            compute_losses(model, b, OBJ, ObjectiveState.create(), torch.Generator().manual_seed(7))
        counts.append(fc.flops)
    assert counts[0] == counts[1] > 0


def test_visual_front_end_flops_are_counted_from_the_input_shapes():
    """The ROI and patch projections' FLOPs, written out from the shapes: 2 x tokens x d_in x d_out
    each, x3 with gradients (forward + backward); counted once per encode, whether or not the front end
    is compiled (the count runs beside it)."""
    model = tiny_model(torch.float32)
    c = model.cfg
    d = model.d_model
    g = torch.Generator().manual_seed(0)
    b, regions = 3, c.num_regions
    roi = {"roi": torch.randn(b, regions, c.roi_dim, generator=g), "boxes": torch.rand(b, regions, 5, generator=g)}
    pixels = {"pixels": torch.randint(0, 255, (b, 3, c.image_size, c.image_size), dtype=torch.uint8, generator=g)}
    patches = (c.image_size // c.patch_size) ** 2
    want = {"roi": 2 * b * regions * c.roi_dim * d,
            "patch": 2 * b * patches * (3 * c.patch_size ** 2 * c.patch_dim + c.patch_dim * d)}
    for mode, visual in (("roi", roi), ("patch", pixels)):
        with flops.FlopCounter() as fc:
            model.visual.count_flops(visual, mode)
        assert fc.flops == 3 * want[mode], mode
        with flops.FlopCounter() as whole:  # an encode counts its front end once, beside the encoder pass
            with torch.no_grad():
                enc = model.encode(torch.full((b, 4), 5), torch.ones(b, 4, dtype=torch.long), visual, mode)
        seq = enc.hidden.shape[1]
        layers, ffn = model.mbart.config.encoder_layers, model.mbart.config.encoder_ffn_dim
        assert whole.flops == want[mode] + b * seq * layers * (8 * d * d + 4 * d * ffn + 4 * seq * d), mode


# ---- torch.compile of whole passes, fixed shapes ---------------------------------------------------

def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].get(k, 0) for k in ("ok",))


@pytest.mark.slow(seconds=65)
def test_fixed_shapes_compile_once_over_varying_lengths():
    """Three steps over batches of natural widths 6, 9 and 12: with fixed shapes every call after the
    first step reuses a compiled graph; without them the new widths compile again."""
    torch._dynamo.reset()
    widths = (6, 9, 12)
    for fixed in (True, False):
        model = tiny_model(torch.float32)
        perf.compile_model(model, "passes", dynamic=False, backend="eager")
        after_first = None
        for i, width in enumerate(widths):
            b = batches(text_len=width, seed=i, dtype=torch.float32)
            if fixed:
                b = perf.fix_batch_shapes(b, TEXT_LEN, TEXT_LEN, 1)
            loss_and_grads(model, b)
            if i == 0:
                after_first = _compiled_frames()
        if fixed:
            assert _compiled_frames() == after_first > 0
            from torch._dynamo.utils import counters
            # nothing splits a compiled pass (the FLOP counter's calls stay outside the visual front end)
            assert not counters["graph_break"], dict(counters["graph_break"])
            # the FLOP counter still sees every pass from inside the compiled modules (visual projections)
            counts = []
            for m in (model, tiny_model(torch.float32)):
                with flops.FlopCounter() as fc:
                    loss_and_grads(m, b)
                counts.append(fc.flops)
            assert counts[0] == counts[1] > 0
        else:
            assert _compiled_frames() > after_first
        torch._dynamo.reset()


@pytest.mark.slow(seconds=120)
@pytest.mark.timeout(1800)  # inductor compiles three passes forward and backward: minutes on a loaded 2-core CPU
def test_compiled_passes_equal_eager():
    """torch.compile (inductor) of the whole encoder, decoder and visual front end: same loss and
    gradients as eager, float32, within 1e-4 relative. MCLM alone runs each of the three once (the
    recompile test above runs every task, with dynamo's eager backend)."""
    torch._dynamo.reset()
    b = perf.fix_batch_shapes(batches(text_len=9, dtype=torch.float32), TEXT_LEN, TEXT_LEN, 1)
    only_mclm = ObjectivesConfig(itm=ObjectiveConfig(enabled=False), xtcl=ObjectiveConfig(enabled=False),
                                 rxvtcl_ds=ObjectiveConfig(enabled=False), rxvtcl_dw=ObjectiveConfig(enabled=False))
    eager = tiny_model(torch.float32)
    loss, grads = loss_and_grads(eager, b, only_mclm)
    compiled = tiny_model(torch.float32)
    perf.apply(compiled, PerfConfig(fixed_shapes=True, compile="passes", sync_free=True, lm_loss_chunk=16))
    c_loss, c_grads = loss_and_grads(compiled, b, only_mclm)
    assert_close(loss, grads, c_loss, c_grads, rel=1e-4)
    # parameter names are unchanged (checkpoints and ZeRO partitions see the same model)
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    torch._dynamo.reset()


def test_perf_config_validation():
    base = ["data.ds_shards=x", "data.dw_shards=x", "data.dt_shards=x"]
    with pytest.raises(ConfigError, match="perf.compile_mode.*fixed_shapes"):
        load_config(None, [*base, "perf.compile=passes", "perf.compile_mode=reduce-overhead"])
    with pytest.raises(ConfigError, match="perf.compile_mode"):
        load_config(None, [*base, "perf.compile_mode=max-autotune"])
    with pytest.raises(ConfigError, match="perf.lm_loss_chunk"):
        load_config(None, [*base, "perf.lm_loss_chunk=-1"])
    cfg = load_config(None, [*base, "perf.compile=passes", "perf.compile_mode=reduce-overhead", "perf.fixed_shapes=true"])
    assert cfg.perf.compile == "passes" and load_config(None, base).perf == PerfConfig()
