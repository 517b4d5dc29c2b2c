"""rc3.inference and the `rc3` CLI on tiny models the tests make (random weights, real-text tokenizer).

References are computed straight from the model's modules, one example at a time and unpadded
(`model.rc3.tr`, `vtr`, `itm_logits`, the heads, `generate`), never through rc3.inference.
"""
from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model_config

from rc3.finetune.heads import ClassificationModel, TaskModel
from rc3.finetune.itr_model import ITRModel
from rc3.finetune.mmt_model import MMTModel
from rc3.modeling import RC3Model

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red dog runs on the grass", "two children play with a ball", "a man rides a bike in the city",
            "a cat sleeps on a sofa", "people walk along the beach", "a woman reads a book in the park"]
N_IMAGES = 9


def rc3_model(tokenizer, seed: int = 0, **cfg) -> RC3Model:
    torch.manual_seed(seed)
    return RC3Model.from_config(tiny_model_config(**cfg), tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id,
                                tokenizer.eos_id).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine images: a JPEG each and an IGLUE-layout H5 group each (absolute boxes, img_w, img_h)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    with h5py.File(root / "features.h5", "w") as f:
        for i in range(N_IMAGES):
            key = f"im{i}"
            n = 5 + i % 4
            g = f.create_group(key)
            g.create_dataset("features", data=rng.random((n, 2048), dtype=np.float32))
            xy = rng.random((n, 2)) * 40
            g.create_dataset("boxes", data=np.concatenate([xy, xy + 20], axis=1).astype(np.float32))
            g.create_dataset("img_w", data=64)
            g.create_dataset("img_h", data=48)
            pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"{key}.jpg", quality=95)
    return root


def roi_of(data: Path, key: str, regions: int = 36) -> dict[str, torch.Tensor]:
    """The model's visual dict of one image, built from the raw H5 group (independent of rc3's readers)."""
    with h5py.File(data / "features.h5", "r") as f:
        feats = f[key]["features"][()]
        b = f[key]["boxes"][()].astype(np.float64)
        w, h = float(f[key]["img_w"][()]), float(f[key]["img_h"][()])
    n = len(feats)
    boxes = np.stack([b[:, 0] / w, b[:, 1] / h, b[:, 2] / w, b[:, 3] / h, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (w * h)], 1)
    roi = torch.zeros(1, regions, 2048)
    roi[0, :n] = torch.from_numpy(feats)
    box = torch.zeros(1, regions, 5)
    box[0, :n] = torch.from_numpy(boxes.astype(np.float32))
    return {"roi": roi, "boxes": box, "roi_mask": (torch.arange(regions) < n)[None]}


def pixels_of(path: Path, size: int = 224) -> torch.Tensor:
    """ImageNet-normalised pixels of a file via torchvision's antialiased bicubic resize (float reference)."""
    from torchvision.transforms.functional import InterpolationMode, pil_to_tensor, resize

    x = pil_to_tensor(Image.open(path).convert("RGB"))
    x = resize(x, [size, size], InterpolationMode.BICUBIC, antialias=True).float() / 255.0
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((x - mean) / std)[None]


def text_ids(tokenizer, text: str, lang: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer.encode(text, lang, 80)
    return torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, tokenizer, tokenizer_dir: Path) -> dict[str, Path]:
    """Model directories: pretrained (roi), ITR (roi), ITR (patch), XVNLI, MaRVL and MMT heads."""
    root = tmp_path_factory.mktemp("models")
    out = {"pretrained": root / "pretrained"}
    rc3_model(tokenizer).save_pretrained(out["pretrained"], tokenizer_dir=tokenizer_dir)
    torch.manual_seed(1)
    for name, model in {"itr": ITRModel(rc3_model(tokenizer, 1), "roi", embed_dim=16),
                        "itr_patch": ITRModel(rc3_model(tokenizer, 2, visual_mode="patch"), "patch", embed_dim=16),
                        "xvnli": ClassificationModel(rc3_model(tokenizer, 3), "roi", "xvnli", 3,
                                                     labels=["entailment", "neutral", "contradiction"]),
                        "marvl": ClassificationModel(rc3_model(tokenizer, 4), "roi", "marvl", 2, labels=["false", "true"]),
                        "mmt": MMTModel(rc3_model(tokenizer, 5), "roi")}.items():
        for p in model.parameters():  # heads start random, not at their init (so reloading is really checked)
            p.data.add_(torch.randn_like(p) * 0.02)
        out[name] = model.save_pretrained(root / name, tokenizer)
    return out


@pytest.mark.slow  # starts Python processes that import torch
def test_importing_inference_pulls_no_training_code() -> None:
    code = ("import sys, rc3.inference, rc3.cli; bad = [m for m in ('deepspeed', 'rc3.pretrain.loop', 'rc3.finetune.trainer', "
            "'rc3.pretrain.objectives', 'rc3.finetune.mmt') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_task_models_round_trip_through_from_pretrained(dirs: dict[str, Path]) -> None:
    for name, cls in (("itr", ITRModel), ("xvnli", ClassificationModel), ("marvl", ClassificationModel), ("mmt", MMTModel)):
        model = TaskModel.from_pretrained(dirs[name])
        assert type(model) is cls and model.task == name.split("_")[0]
        again = cls.from_pretrained(dirs[name])
        a, b = model.state_dict(), again.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert TaskModel.from_pretrained(dirs["xvnli"]).labels == ["entailment", "neutral", "contradiction"]
    with pytest.raises(ValueError, match="not a ITRModel"):
        ITRModel.from_pretrained(dirs["xvnli"])
    with pytest.raises(FileNotFoundError, match="task_head.json"):
        TaskModel.from_pretrained(dirs["pretrained"])


def test_embeddings_equal_the_model_one_text_and_image_at_a_time(dirs: dict[str, Path], data: Path, tokenizer) -> None:
    from rc3.inference import load

    m = load(dirs["itr"], batch_size=4, features=[data / "features.h5"])
    ref = ITRModel.from_pretrained(dirs["itr"]).eval()
    texts = CAPTIONS + ["ein roter Hund läuft"]
    langs = ["en"] * len(CAPTIONS) + ["de"]
    got = m.embed_texts(texts, langs)
    with torch.no_grad():
        want = torch.cat([ref.text_embeddings(*text_ids(tokenizer, t, lang)) for t, lang in zip(texts, langs)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got.shape == (len(texts), 16)
    keys = [f"im{i}" for i in range(N_IMAGES)]
    got_i = m.embed_images(keys)
    with torch.no_grad():
        want_i = torch.cat([ref.image_embeddings(roi_of(data, k)) for k in keys])
    torch.testing.assert_close(got_i, want_i, rtol=1e-4, atol=1e-5)
    # The same images as files (looked up by file stem), as ROI dicts with pixel boxes, as normalised boxes.
    torch.testing.assert_close(m.embed_images([data / "img" / f"{k}.jpg" for k in keys]), got_i)
    with h5py.File(data / "features.h5", "r") as f:
        dicts = [{"features": f[k]["features"][()], "boxes": f[k]["boxes"][()], "img_w": 64, "img_h": 48} for k in keys]
    torch.testing.assert_close(m.embed_images(dicts), got_i)
    norm = [{"roi": roi_of(data, k)["roi"][0, :5 + i % 4], "boxes": roi_of(data, k)["boxes"][0, :5 + i % 4]}
            for i, k in enumerate(keys)]
    torch.testing.assert_close(m.embed_images(norm), got_i)
    # A pretrained model (no ITR head): normalised TR / image-only VtR.
    p = load(dirs["pretrained"], features=[data / "features.h5"])
    rc3 = RC3Model.from_pretrained(dirs["pretrained"]).eval()
    with torch.no_grad():
        tr = torch.nn.functional.normalize(rc3.tr(*text_ids(tokenizer, texts[0], "en")), dim=-1)
        empty = torch.zeros(1, 0, dtype=torch.long)
        vtr = torch.nn.functional.normalize(rc3.vtr(empty, empty.bool(), roi_of(data, "im0"), "roi"), dim=-1)
    torch.testing.assert_close(p.embed_texts(texts[:1], "en"), tr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p.embed_images(["im0"]), vtr, rtol=1e-4, atol=1e-5)


def test_patch_mode_reads_files_and_pil_images(dirs: dict[str, Path], data: Path) -> None:
    from rc3.inference import load

    m = load(dirs["itr_patch"], batch_size=3)
    ref = ITRModel.from_pretrained(dirs["itr_patch"]).eval()
    files = [data / "img" / f"im{i}.jpg" for i in range(4)]
    got = m.embed_images(files)
    with torch.no_grad():
        want = torch.cat([ref.image_embeddings({"pixels": pixels_of(f)}) for f in files])
    # The loaders' bicubic kernel and torchvision's agree to one intensity level, not bit for bit.
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
    torch.testing.assert_close(m.embed_images([Image.open(f) for f in files]), got)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        m.embed_images(["nope.jpg"])


def test_match_is_the_itm_logit_of_each_pair(dirs: dict[str, Path], data: Path, tokenizer) -> None:
    from rc3.inference import load

    m = load(dirs["itr"], batch_size=5, features=[data / "features.h5"])
    rc3 = RC3Model.from_pretrained(dirs["itr"]).eval()
    keys = ["im0", "im3", "im5"]
    got = m.match(keys, CAPTIONS[:4], "en")
    with torch.no_grad():
        want = torch.tensor([[float(rc3.itm_logits(rc3.vtr(*text_ids(tokenizer, t, "en"), roi_of(data, k), "roi")))
                              for t in CAPTIONS[:4]] for k in keys])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.match(keys, CAPTIONS[:3], "en", pairs=True), torch.diagonal(want[:, :3]))


def brute_force(dirs: dict[str, Path], data: Path, tokenizer, queries: list[str]) -> np.ndarray:
    """ITM logit of every (query, image) pair, one unpadded pair per forward of the model's own modules."""
    rc3 = RC3Model.from_pretrained(dirs["itr"]).eval()
    with torch.no_grad():
        return np.array([[float(rc3.itm_logits(rc3.vtr(*text_ids(tokenizer, q, "en"), roi_of(data, f"im{i}"), "roi")))
                          for i in range(N_IMAGES)] for q in queries])


def assert_same_ranking(hits, scores: np.ndarray, tol: float = 1e-4) -> None:
    """`hits` rank every image in the order of the reference scores (only exact near-ties may swap)."""
    ref_order = np.argsort(-scores, kind="stable")
    got = [h.index for h in hits]
    assert sorted(got) == list(range(len(scores)))
    np.testing.assert_allclose([h.score for h in hits], scores[got], rtol=1e-4, atol=1e-5)
    for a, b in zip(got, ref_order):
        assert a == b or abs(scores[a] - scores[b]) < tol


def test_search_k_all_equals_brute_force_and_k_reranks_faiss_candidates(dirs: dict[str, Path], data: Path,
                                                                       tokenizer, tmp_path: Path) -> None:
    from rc3.inference import load

    m = load(dirs["itr"], batch_size=4, features=[data / "features.h5"])
    keys = [f"im{i}" for i in range(N_IMAGES)]
    index = m.build_index(keys)
    scores = brute_force(dirs, data, tokenizer, CAPTIONS)
    all_hits = m.search(index, CAPTIONS, "en", k="all")
    for q, hits in enumerate(all_hits):
        assert [h.rank for h in hits] == list(range(N_IMAGES)) and hits[0].name == keys[hits[0].index]
        assert_same_ranking(hits, scores[q])
    # k = 3: the three most similar images (dual embeddings, numpy), ordered by their ITM logits.
    ref = ITRModel.from_pretrained(dirs["itr"]).eval()
    with torch.no_grad():
        img = torch.cat([ref.image_embeddings(roi_of(data, k)) for k in keys]).numpy()
        txt = torch.cat([ref.text_embeddings(*text_ids(tokenizer, q, "en")) for q in CAPTIONS]).numpy()
    sim = txt @ img.T
    for q, hits in enumerate(m.search(index, CAPTIONS, "en", k=3)):
        cands = set(np.argsort(-sim[q], kind="stable")[:3].tolist())
        assert {h.index for h in hits} == cands
        assert [h.index for h in hits] == sorted(cands, key=lambda i: -scores[q, i])
        np.testing.assert_allclose([h.similarity for h in hits], sim[q, [h.index for h in hits]], rtol=1e-4, atol=1e-5)
    plain = m.search(index, CAPTIONS[:2], "en", k=4, rerank=False)
    for q, hits in enumerate(plain):
        assert [h.index for h in hits] == np.argsort(-sim[q], kind="stable")[:4].tolist()
    # Saved and loaded: the same results; another model's index is refused; a damaged one named.
    index.save(tmp_path / "idx")
    again = m.load_index(tmp_path / "idx")
    assert again.names == keys
    reloaded = m.search(again, CAPTIONS, "en", k="all")
    assert [[(h.index, h.score) for h in r] for r in reloaded] == [[(h.index, h.score) for h in r] for r in all_hits]
    other = load(dirs["pretrained"], features=[data / "features.h5"])
    with pytest.raises(ValueError, match="-d embeddings|another model"):
        other.load_index(tmp_path / "idx")
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        m.load_index(tmp_path / "idx")


def test_classify_gives_label_names_of_the_finetuned_head(dirs: dict[str, Path], data: Path, tokenizer) -> None:
    from rc3.inference import load

    m = load(dirs["xvnli"], batch_size=2, features=[data / "features.h5"])
    ref = ClassificationModel.from_pretrained(dirs["xvnli"]).eval()
    keys = ["im1", "im2", "im4"]
    preds = m.classify(keys, CAPTIONS[:3], "en")
    for k, t, p in zip(keys, CAPTIONS, preds):
        with torch.no_grad():
            logits = ref({**roi_of(data, k), **dict(zip(("input_ids", "attention_mask"), text_ids(tokenizer, t, "en")))})["logits"]
        probs = torch.softmax(logits[0], -1)
        assert p.label == ["entailment", "neutral", "contradiction"][int(probs.argmax())]
        assert p.probability == pytest.approx(float(probs.max()), rel=1e-4)
        assert list(p.probabilities) == ["entailment", "neutral", "contradiction"]
    marvl = load(dirs["marvl"], features=[data / "features.h5"])
    ref2 = ClassificationModel.from_pretrained(dirs["marvl"]).eval()
    pair = marvl.classify([("im0", "im1")], ["Ada dua anjing."], "id")[0]
    second = {f"{k}2": v for k, v in roi_of(data, "im1").items()}
    with torch.no_grad():
        logits = ref2({**roi_of(data, "im0"), **second,
                       **dict(zip(("input_ids", "attention_mask"), text_ids(tokenizer, "Ada dua anjing.", "id")))})["logits"]
    assert pair.label == ["false", "true"][int(logits.argmax())]
    with pytest.raises(ValueError, match="no classifier head"):
        load(dirs["itr"]).classify(["im0"], ["x"], "en")


def test_translate_is_the_recipes_beam_search(dirs: dict[str, Path], data: Path, tokenizer) -> None:
    from rc3.inference import load

    m = load(dirs["mmt"], batch_size=2, features=[data / "features.h5"])
    rc3 = RC3Model.from_pretrained(dirs["mmt"]).eval()
    src = CAPTIONS[:3]
    got = m.translate(src, ["im0", "im1", "im2"], src="en", tgt="de", num_beams=2, max_new_tokens=6)
    for i, (s, g) in enumerate(zip(src, got)):
        seq = rc3.generate(*text_ids(tokenizer, s, "en"), tokenizer.lang_id("de"), roi_of(data, f"im{i}"), "roi",
                           num_beams=2, max_new_tokens=6)[0]
        assert g == tokenizer.decode(seq.tolist())
    text_only = m.translate(src[:1], src="en", tgt="fr", num_beams=1, max_new_tokens=5)
    seq = rc3.generate(*text_ids(tokenizer, src[0], "en"), tokenizer.lang_id("fr"), None, num_beams=1, max_new_tokens=5)[0]
    assert text_only == [tokenizer.decode(seq.tolist())]


def test_bf16_and_progress_on_long_inputs(dirs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from rc3.inference import PROGRESS_MIN, load

    m = load(dirs["itr"], dtype="bf16", batch_size=64)
    assert next(m.rc3.parameters()).dtype == torch.bfloat16
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(PROGRESS_MIN)]
    emb = m.embed_texts(texts, "en")
    assert emb.dtype == torch.float32 and emb.shape == (PROGRESS_MIN, 16)
    assert "embed texts" in capsys.readouterr().err  # tqdm writes the bar to stderr
    full = load(dirs["itr"]).embed_texts(texts[:6], "en")
    torch.testing.assert_close(emb[:6], full, rtol=0, atol=5e-2)  # bf16 stays near fp32


def test_errors_name_the_callers_arguments_with_a_dtype_given_by_name(dirs: dict[str, Path], data: Path) -> None:
    """The `rc3` command passes its flags as arg_names and --dtype as a name; errors must still say the flags."""
    from rc3.inference import load

    names = {"features": "--features STORE.h5", "detector_weights": "--detector-weights FILE"}
    for dtype in (None, torch.float32, "fp32", "bf16"):
        m = load(dirs["itr"], dtype=dtype, arg_names=names)
        with pytest.raises(ValueError) as err:  # a roi model with neither a feature store nor a detector
            m.load_image(data / "img" / "im0.jpg")
        assert "give --features STORE.h5" in str(err.value) and "or --detector-weights FILE" in str(err.value), dtype


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rc3.cli", *argv], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.slow  # starts Python processes that import torch
def test_cli_prints_tables(dirs: dict[str, Path], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rc3.cli import main

    feats = ["--features", str(data / "features.h5"), "--quiet"]
    main(["embed", str(dirs["itr"]), "--text", CAPTIONS[0], "--text", "ein Hund", "--lang", "en", "de", "--image", "im0",
          "--out", str(tmp_path / "e.safetensors"), *feats])
    out = capsys.readouterr().out
    assert "| kind  | input" in out and out.count("| text ") == 2 and out.count("| image ") == 1
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "e.safetensors"))["texts"].shape == (2, 16)

    main(["index", str(dirs["itr"]), "--image-dir", str(data / "img"), "--out", str(tmp_path / "idx"), *feats])
    assert "9 images" in capsys.readouterr().out
    main(["search", str(dirs["itr"]), "--index", str(tmp_path / "idx"), "--query", CAPTIONS[0], "--query", CAPTIONS[1],
          "--k", "4", "--html", str(tmp_path / "top.html"), *feats])
    out = capsys.readouterr().out
    assert out.count("query: ") == 2 and out.count("img/im") == 8 and "ITM logit" in out
    page = (tmp_path / "top.html").read_text()
    assert page.count("class='hit'") == 8 and page.count("<img ") == 8

    main(["classify", str(dirs["xvnli"]), "--image", "im0", "--text", CAPTIONS[0], "--image", "im1", "--text", CAPTIONS[1],
          *feats])
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| im") and "| text" not in line]
    assert "xvnli label" in out and len(rows) == 2
    assert all(r[2] in ("entailment", "neutral", "contradiction") and 0 < float(r[3]) <= 1 for r in rows)

    main(["translate", str(dirs["mmt"]), "--text", CAPTIONS[0], "--src", "en", "--tgt", "de", "--num-beams", "2",
          "--max-new-tokens", "4", "--image", "im0", *feats])
    assert "| en " in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_:
        main(["classify", str(dirs["itr"]), "--image", "im0", "--text", "x", *feats])
    assert exit_.value.code == 2 and "no classifier head" in capsys.readouterr().err


@pytest.mark.slow  # starts Python processes that import torch
def test_python_m_rc3_cli_and_console_script_entry() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("embed", "search", "classify", "translate"))
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'rc3 = "rc3.cli:main"' in pyproject
    proc = run_cli("search", "/nonexistent/model", "--query", "x")
    assert proc.returncode == 2 and "rc3_config.json" in proc.stderr


def chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class PageParser(HTMLParser):
    """What a browser would lay out: the query sections, the result figures and their thumbnails."""

    def __init__(self) -> None:
        super().__init__()
        self.sections, self.figures, self.images = 0, 0, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.sections += tag == "section" and a.get("class") == "query"
        self.figures += tag == "figure" and a.get("class") == "hit"
        if tag == "img":
            self.images.append(a.get("src") or "")


@pytest.mark.slow  # starts Python processes that import torch
def test_search_html_page_shows_every_result_with_its_thumbnail(dirs: dict[str, Path], data: Path,
                                                                 tmp_path: Path) -> None:
    """The page's structure and thumbnails are checked here; where chromium is installed (Debian:
    apt-get install -y chromium) a headless browser also loads it and counts what it decoded and drew."""
    import re
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from rc3.cli import main

    page = tmp_path / "top.html"
    main(["search", str(dirs["itr"]), "--image-dir", str(data / "img"), "--features", str(data / "features.h5"),
          "--query", CAPTIONS[0], "--query", CAPTIONS[1], "--query", "ein Hund", "--lang", "en", "en", "de",
          "--k", "3", "--html", str(page), "--quiet"])
    parsed = PageParser()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert (parsed.sections, parsed.figures, len(parsed.images)) == (3, 9, 9)  # 3 queries x 3 results
    for src in parsed.images:  # every thumbnail is a file URI of an image that decodes
        url = urlparse(src)
        assert url.scheme == "file", src
        with Image.open(url2pathname(url.path)) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0

    browser = chromium()
    if browser is None:
        return
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=10000"]
    proc = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs == {"results": "9", "loaded-images": "9"}  # 3 queries x 3 results, every thumbnail decoded
    assert len(re.findall(r"<section class=\"query\"", proc.stdout)) == 3
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1400, 1000) and pixels.std() > 5  # something was drawn, not a blank page


# ---- user input errors ---------------------------------------------------------------------------
def test_empty_texts_are_errors_naming_the_argument(dirs: dict[str, Path], data: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from rc3.cli import main
    from rc3.inference import load

    feats = [data / "features.h5"]
    itr = load(dirs["itr"], features=feats, progress=False)
    with pytest.raises(ValueError, match=r"^texts\[1\] is whitespace only \(' \\t'\); give a non-empty text$"):
        itr.embed_texts(["a dog", " \t"], "en")
    index = itr.build_index(["im0", "im1"])
    with pytest.raises(ValueError, match=r"^queries\[0\] is empty \(''\)"):
        itr.search(index, ["", "a dog"], "en")
    with pytest.raises(ValueError, match=r"^texts\[0\] is whitespace only"):
        load(dirs["xvnli"], features=feats, progress=False).classify(["im0"], ["  "], "en")
    with pytest.raises(ValueError, match=r"^texts\[0\] is empty"):
        load(dirs["mmt"], features=feats, progress=False).translate([""], src="en", tgt="de")
    cli = ["--features", str(data / "features.h5"), "--quiet"]
    for argv, flag in ((["embed", str(dirs["itr"]), "--text", "a dog", "--text", "  "], "--text: text 2 of 2"),
                       (["search", str(dirs["itr"]), "--image", "im0", "--query", ""], "--query: text 1 of 1"),
                       (["translate", str(dirs["mmt"]), "--src", "en", "--tgt", "de", "--text", " "], "--text: text 1")):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, *cli])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and flag in err and "give a non-empty text" in err, err


def test_long_texts_are_truncated_with_a_warning(dirs: dict[str, Path], data: Path, tokenizer,
                                                 capsys: pytest.CaptureFixture) -> None:
    from rc3.cli import main
    from rc3.inference import TextTruncatedWarning, load

    long_text = " ".join(CAPTIONS * 3)
    n = len(tokenizer.segment([long_text])[0])
    m = load(dirs["itr"], max_text_len=10, progress=False)
    assert n > 8
    with pytest.warns(TextTruncatedWarning, match=rf"^texts\[1\] is {n} pieces long, over the limit of 8 pieces "
                                                  r"\(max_text_len 10 less \[BOS\] and the language tag\)"):
        got = m.embed_texts([CAPTIONS[0], long_text], "en")
    ids = tokenizer.encode(long_text, "en", 10)
    assert len(ids) == 10
    ref = ITRModel.from_pretrained(dirs["itr"]).eval()
    with torch.no_grad():
        want = ref.text_embeddings(torch.tensor([ids]), torch.ones(1, 10, dtype=torch.bool))
    torch.testing.assert_close(got[1:], want, rtol=1e-4, atol=1e-5)  # the first 8 pieces, as the model reads them
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text within the limit warns about nothing
        m.embed_texts([CAPTIONS[0]], "en")
    very_long = " ".join(CAPTIONS * 8)
    pieces = len(tokenizer.segment([very_long])[0])
    assert pieces > 78
    main(["embed", str(dirs["itr"]), "--text", very_long, "--quiet"])
    err = capsys.readouterr().err
    assert f"warning: texts[0] is {pieces} pieces long, over the limit of 78 pieces" in err, err


def test_index_of_a_folder_skips_and_lists_files_that_are_not_images(dirs: dict[str, Path], data: Path,
                                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rc3.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((data / "img").iterdir()):
        photos.joinpath(f.name).write_bytes(f.read_bytes())
    (photos / "notes.jpg").write_text("not a picture, a note saved with the wrong name\n")
    (photos / "README.txt").write_text("holiday photos\n")
    (photos / "empty.png").write_bytes(b"")
    main(["index", str(dirs["itr"]), "--image-dir", str(photos), "--out", str(tmp_path / "idx"),
          "--features", str(data / "features.h5"), "--quiet"])
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "9 images" in captured.out, captured
    assert f"{photos / 'notes.jpg'}: not an image\n" in captured.err
    assert f"{photos / 'README.txt'}: not an image\n" in captured.err
    assert f"{photos / 'empty.png'}: not an image (empty file)" in captured.err
    assert "skipped 3 file(s) under --image-dir" in captured.err
    # Pixels are decoded when indexed: a file whose header is fine but whose data is cut is found then.
    good = (data / "img" / "im0.jpg").read_bytes()
    (photos / "sub").mkdir()
    (photos / "sub" / "cut.jpg").write_bytes(good[: len(good) // 3])  # a broken download
    main(["index", str(dirs["itr_patch"]), "--image-dir", str(photos), "--out", str(tmp_path / "idx2"), "--quiet"])
    captured = capsys.readouterr()
    assert "9 images" in captured.out and "(1 unreadable skipped)" in captured.out, captured
    assert f"{photos / 'sub' / 'cut.jpg'}: not a decodable image" in captured.err
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.jpg").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["index", str(dirs["itr_patch"]), "--image-dir", str(tmp_path / "none"), "--out", str(tmp_path / "i3")])
    assert exit_.value.code == 2 and "no usable image files (1 skipped, listed above)" in capsys.readouterr().err
