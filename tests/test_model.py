"""RC3Model: sequence layouts, masks, padding invariance, mBART loading and save/load round trips."""
import pytest
import torch
from tiny import tiny_model_config
from transformers import MBartConfig, MBartForConditionalGeneration

from rc3.modeling import RC3Model, build_model

B, R = 3, 36


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size).eval()


def batch(tokenizer, texts=("A dog runs.", "Two men play football on the beach.", "A cat.")):
    ids = [tokenizer.encode(t, "en") for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_id)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    g = torch.Generator().manual_seed(1)
    visual = {"roi": torch.randn(len(ids), R, 2048, generator=g), "boxes": torch.rand(len(ids), R, 5, generator=g),
              "roi_mask": torch.ones(len(ids), R, dtype=torch.bool),
              "pixels": torch.randn(len(ids), 3, 224, 224, generator=g)}
    return input_ids, mask, visual


@pytest.mark.parametrize("mode,n_visual", [("roi", 1 + 36), ("patch", 1 + 49), ("combined", 1 + 36 + 1 + 49)])
def test_layout_per_visual_mode(model, tokenizer, mode, n_visual):
    ids, mask, visual = batch(tokenizer)
    enc = model.encode(ids, mask, visual, mode)
    assert enc.text_start == n_visual
    assert enc.hidden.shape == (3, n_visual + ids.shape[1], 32)
    assert enc.mask[:, :n_visual].all()
    assert torch.equal(enc.mask[:, n_visual:], mask)


def test_two_image_layout(model, tokenizer):
    ids, mask, visual = batch(tokenizer)
    visual2 = dict(visual, roi2=visual["roi"].flip(0), boxes2=visual["boxes"].flip(0))
    visual2["roi_mask"] = visual2["roi_mask"].clone()
    visual2["roi_mask"][0, 30:] = False  # fewer regions in one image: masked, not dropped
    enc = model.encode(ids, mask, visual2, "roi")
    assert enc.text_start == 1 + 36 + 1 + 36  # [CLS] img1 [SEP'] img2
    assert not enc.mask[0, 31:37].any() and enc.mask[1, 31:37].all()


def test_uint8_pixels_are_normalised_by_the_patch_front_end(model, tokenizer):
    ids, mask, visual = batch(tokenizer)
    u8 = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    as_float = (u8.float() / 255 - mean) / std
    torch.testing.assert_close(model.vtr(ids, mask, {"pixels": u8}, "patch"),
                               model.vtr(ids, mask, {"pixels": as_float}, "patch"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["roi", "patch", "combined"])
def test_visual_index_equals_indexing_the_images_first(model, tokenizer, mode):
    """Each distinct image through the front end once, then gathered: the same states and gradients."""
    ids, mask, visual = batch(tokenizer)
    visual["roi_mask"][1, 20:] = False  # the per-image mask travels with the gathered tokens
    index = torch.tensor([2, 0, 2, 1, 1, 0])
    t_idx = torch.tensor([0, 1, 2, 2, 0, 1])
    gathered = model.encode(ids[t_idx], mask[t_idx], visual, mode, visual_index=index)
    indexed = model.encode(ids[t_idx], mask[t_idx], {k: v[index] for k, v in visual.items()}, mode)
    torch.testing.assert_close(gathered.hidden, indexed.hidden, atol=1e-5, rtol=1e-5)
    assert torch.equal(gathered.mask, indexed.mask)
    grads = []
    for vis, kw in ((visual, {"visual_index": index}), ({k: v[index] for k, v in visual.items()}, {})):
        model.zero_grad()
        model.vtr(ids[t_idx], mask[t_idx], vis, mode, **kw).sum().backward()
        grads.append(model.visual.roi.feature_proj.weight.grad.clone() if mode != "patch"
                     else model.visual.patch.proj.weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_visual_index_backward_is_deterministic_with_threads(model):
    """Bit-identical gradients run to run on several CPU threads (exact resumes depend on it)."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8, generator=g)
    ids = torch.randint(5, 100, (48, 12), generator=g)
    mask = torch.ones(48, 12, dtype=torch.bool)
    index = torch.arange(8).repeat(6)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            model.zero_grad()
            model.vtr(ids, mask, {"pixels": pixels}, "patch", visual_index=index).pow(2).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
        model.zero_grad()
    for other in grads[1:]:
        assert all(torch.equal(grads[0][n], other[n]) for n in grads[0])


def test_text_only(model, tokenizer):
    ids, mask, _ = batch(tokenizer)
    enc = model.encode(ids, mask)
    assert enc.text_start == 0 and enc.hidden.shape[:2] == ids.shape
    assert model.tr(ids, mask).shape == (3, 32)


def test_missing_visual_input_is_named(model, tokenizer):
    ids, mask, visual = batch(tokenizer)
    with pytest.raises(KeyError, match="'pixels'"):
        model.encode(ids, mask, {"roi": visual["roi"], "boxes": visual["boxes"]}, "patch")
    with pytest.raises(ValueError, match="not one of roi, patch, combined"):
        model.encode(ids, mask, visual, "grid")


@pytest.mark.parametrize("mode", ["roi", "combined"])
def test_padding_invariance(model, tokenizer, mode):
    ids, mask, visual = batch(tokenizer)
    full_vtr, full_tr = model.vtr(ids, mask, visual, mode), model.tr(ids, mask)
    for i in range(3):
        n = int(mask[i].sum())
        one = {k: v[i: i + 1] for k, v in visual.items()}
        alone_vtr = model.vtr(ids[i: i + 1, :n], mask[i: i + 1, :n], one, mode)
        alone_tr = model.tr(ids[i: i + 1, :n], mask[i: i + 1, :n])
        torch.testing.assert_close(alone_vtr, full_vtr[i: i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone_tr, full_tr[i: i + 1], atol=1e-5, rtol=0)


def test_heads_shapes(model, tokenizer):
    ids, mask, visual = batch(tokenizer)
    enc = model.encode(ids, mask, visual, "roi")
    assert model.mlm_logits(enc).shape == (3, ids.shape[1], tokenizer.vocab_size)
    assert model.itm_logits(enc.hidden[:, 0]).shape == (3,)
    tgt = torch.tensor([[tokenizer.eos_id, tokenizer.lang_id("de"), 10, 11]] * 3)
    assert model.decode(tgt, None, enc).shape == (3, 4, tokenizer.vocab_size)


def test_mlm_head_is_tied_to_embeddings(model):
    assert model.mbart.lm_head.weight.data_ptr() == model.mbart.model.shared.weight.data_ptr()


def test_generate_starts_with_the_language_tag(model, tokenizer):
    ids, mask, visual = batch(tokenizer)
    out = model.generate(ids, mask, tgt_lang_id=tokenizer.lang_id("de"), visual=visual, mode="roi",
                         num_beams=2, max_new_tokens=4)
    assert (out[:, 0] == tokenizer.eos_id).all() and (out[:, 1] == tokenizer.lang_id("de")).all()


def test_save_and_load_reproduce_outputs(model, tokenizer, tokenizer_dir, tmp_path):
    ids, mask, visual = batch(tokenizer)
    out = model.save_pretrained(tmp_path / "m", tokenizer_dir=tokenizer_dir)
    assert (out / "model.safetensors").is_file() and (out / "sentencepiece.bpe.model").is_file()
    again = RC3Model.from_pretrained(out).eval()
    for mode in ("roi", "patch", "combined"):
        assert torch.equal(again.vtr(ids, mask, visual, mode), model.vtr(ids, mask, visual, mode))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(out)


def test_loads_a_local_hf_mbart_directory(tokenizer, tokenizer_dir, tmp_path):
    torch.manual_seed(3)
    hf_cfg = MBartConfig(vocab_size=tokenizer.vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=128, scale_embedding=True)
    source = MBartForConditionalGeneration(hf_cfg)
    source.save_pretrained(tmp_path / "mbart")
    for f in tokenizer_dir.iterdir():
        (tmp_path / "mbart" / f.name).write_bytes(f.read_bytes())
    cfg = tiny_model_config(init_from=str(tmp_path / "mbart"), d_model=999)  # sizes come from the checkpoint
    model = build_model(cfg, tokenizer)
    assert model.d_model == 32
    src_state = source.state_dict()
    for name, tensor in model.mbart.state_dict().items():
        assert torch.equal(tensor, src_state[name]), name
    # and an RC3 directory saved from it loads through the same entry point
    model.save_pretrained(tmp_path / "rc3", tokenizer_dir=tokenizer_dir)
    again = build_model(tiny_model_config(init_from=str(tmp_path / "rc3")), tokenizer)
    assert torch.equal(again.mbart.model.shared.weight, source.model.shared.weight)


def test_vocab_mismatch_is_a_clear_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="token embeddings but the tokenizer has"):
        build_model(tiny_model_config(vocab_size=tokenizer.vocab_size + 5), tokenizer)


def test_gradient_checkpointing_switch_gives_same_gradients(tokenizer):
    ids, mask, visual = batch(tokenizer)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = RC3Model.from_config(tiny_model_config(gradient_checkpointing=ckpt), tokenizer.vocab_size).train()
        # The switch must reach the backbone (name differs between transformers 4.x and 5.x).
        flag = getattr(m.mbart, "is_activation_checkpointing", None)
        assert (m.mbart.is_gradient_checkpointing if flag is None else flag) == ckpt
        m.vtr(ids, mask, visual, "roi").sum().backward()
        grads.append(m.visual.roi.feature_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_implementation_switch(tokenizer, impl):
    torch.manual_seed(0)
    m = RC3Model.from_config(tiny_model_config(attn_implementation=impl), tokenizer.vocab_size).eval()
    assert m.mbart.config._attn_implementation == impl
    ids, mask, visual = batch(tokenizer)
    assert torch.isfinite(m.vtr(ids, mask, visual, "roi")).all()


def test_vit_weights_bring_their_own_pixel_normalisation(tokenizer, tmp_path):
    """With model.vit_weights, uint8 pixels are normalised with the mean / std of those weights (timm's
    pretrained config of model.vit_name: 0.5 / 0.5 for the augreg ViT-B/32), and the finetuned model
    keeps them: they are saved in its config."""
    import dataclasses

    from safetensors.torch import save_file

    cfg = tiny_model_config()
    g = torch.Generator().manual_seed(2)
    weights = {"patch_embed.proj.weight": torch.randn(cfg.patch_dim, 3, 32, 32, generator=g) * 0.02,
               "patch_embed.proj.bias": torch.zeros(cfg.patch_dim)}
    save_file(weights, str(tmp_path / "vit.safetensors"))
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, vit_weights=str(tmp_path / "vit.safetensors")), tokenizer).eval()
    assert model.cfg.pixel_mean == [0.5, 0.5, 0.5] and model.cfg.pixel_std == [0.5, 0.5, 0.5]
    assert torch.equal(model.visual.patch.patch_embed.proj.weight, weights["patch_embed.proj.weight"])
    ids, mask, _ = batch(tokenizer)
    u8 = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=g)
    as_float = (u8.float() / 255 - 0.5) / 0.5  # the ViT's own normalisation, written out
    want = model.vtr(ids, mask, {"pixels": as_float}, "patch")
    torch.testing.assert_close(model.vtr(ids, mask, {"pixels": u8}, "patch"), want, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    again = RC3Model.from_pretrained(tmp_path / "saved").eval()
    assert again.cfg.pixel_mean == [0.5, 0.5, 0.5]
    torch.testing.assert_close(again.vtr(ids, mask, {"pixels": u8}, "patch"), want, atol=1e-5, rtol=1e-5)
    # without ViT weights: ImageNet's statistics, as before
    plain = build_model(cfg, tokenizer)
    assert plain.cfg.pixel_mean is None and torch.allclose(plain.visual.patch.mean.flatten() / 255,
                                                           torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(ValueError, match="model.vit_name"):
        build_model(dataclasses.replace(cfg, vit_weights=str(tmp_path / "vit.safetensors"), vit_name="no_such_vit"),
                    tokenizer)


# ---- readings of Sec. 2.2 (FIDELITY.md, "Model") ------------------------------------------------

def test_roi_projection_fc_is_one_linear_layer_on_the_features(tokenizer, tmp_path):
    import torch.nn.functional as F

    ids, mask, visual = batch(tokenizer)
    torch.manual_seed(0)
    fc = RC3Model.from_config(tiny_model_config(roi_projection="fc"), tokenizer.vocab_size).eval()
    roi = fc.visual.roi
    assert {n for n, _ in roi.named_parameters()} == {"feature_proj.weight", "feature_proj.bias"}
    tokens, _ = roi.tokens(visual, "", torch.float32)
    torch.testing.assert_close(tokens, visual["roi"] @ roi.feature_proj.weight.T + roi.feature_proj.bias)
    # the box geometry is not read: without it, or with other boxes, the VtR is the same
    want = fc.vtr(ids, mask, visual, "roi")
    assert torch.equal(fc.vtr(ids, mask, {k: v for k, v in visual.items() if k != "boxes"}, "roi"), want)
    assert torch.equal(fc.vtr(ids, mask, dict(visual, boxes=visual["boxes"].flip(0)), "roi"), want)
    # the model directory keeps the reading: it loads back as one layer with the same outputs
    fc.save_pretrained(tmp_path / "fc")
    again = RC3Model.from_pretrained(tmp_path / "fc").eval()
    assert again.cfg.roi_projection == "fc" and not hasattr(again.visual.roi, "box_proj")
    assert torch.equal(again.vtr(ids, mask, visual, "roi"), want)
    # the default: LayerNorm(FC(features) + FC(boxes)), so the boxes move the tokens
    torch.manual_seed(0)
    default = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size).eval()
    d = default.visual.roi
    summed = visual["roi"] @ d.feature_proj.weight.T + d.feature_proj.bias + visual["boxes"] @ d.box_proj.weight.T \
        + d.box_proj.bias
    torch.testing.assert_close(d.tokens(visual, "", torch.float32)[0],
                               F.layer_norm(summed, (32,), d.norm.weight, d.norm.bias))
    assert not torch.allclose(default.vtr(ids, mask, dict(visual, boxes=visual["boxes"].flip(0)), "roi"),
                              default.vtr(ids, mask, visual, "roi"))
    with pytest.raises(KeyError, match="boxes"):
        default.vtr(ids, mask, {k: v for k, v in visual.items() if k != "boxes"}, "roi")


@pytest.mark.parametrize("mode", ["roi", "combined"])
def test_text_positions_switch(tokenizer, mode):
    """What the encoder's embedding LayerNorm receives: text embedding + the position row of each text
    token. after_visual: rows start, start + 1, ... (the whole sequence numbered); from_zero: rows 0, 1, ...,
    those of the same text encoded alone. The visual tokens' rows and text-only inputs are the same."""
    ids, mask, visual = batch(tokenizer)
    seen: dict[str, torch.Tensor] = {}
    out: dict[str, RC3Model] = {}
    for reading in ("after_visual", "from_zero"):
        torch.manual_seed(0)
        m = RC3Model.from_config(tiny_model_config(text_positions=reading), tokenizer.vocab_size).eval()
        norm = m.mbart.model.encoder.layernorm_embedding
        hook = norm.register_forward_pre_hook(lambda _m, args, r=reading: seen.__setitem__(r, args[0].detach()))
        start = m.encode(ids, mask, visual, mode).text_start
        hook.remove()
        table = m.mbart.model.encoder.embed_positions
        first = start if reading == "after_visual" else 0
        rows = table.weight[table.offset + first: table.offset + first + ids.shape[1]].detach()
        with torch.no_grad():
            torch.testing.assert_close(seen[reading][:, start:] - m.embed_text(ids), rows.expand(len(ids), -1, -1))
        out[reading] = m
    assert torch.equal(seen["after_visual"][:, :start], seen["from_zero"][:, :start])
    assert not torch.allclose(out["after_visual"].vtr(ids, mask, visual, mode), out["from_zero"].vtr(ids, mask, visual, mode))
    assert torch.equal(out["after_visual"].tr(ids, mask), out["from_zero"].tr(ids, mask))
