"""Code-switching (rc3.finetune.code_switch), the xGQA linguistic prior (rc3.finetune.linguistic_prior) and the
synthetic world's MUSE dictionaries.

The switcher is checked against hand-written expectations (ratio 0 and 1, capitals, punctuation, one
draw per known word), for determinism per (seed, example) and for leaving the global random state
alone. Every recipe is run twice on tiny data: once with today's code path (the new hooks replaced by
the identity) and once with the default config; the trained weights must be bit-identical, and a run
with ratio 1 must differ (the hook is wired in). The prior's loss is compared with a NumPy
transcription of its equation.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rc3.config import ConfigError
from rc3.finetune.code_switch import CodeSwitcher, DictionaryError, read_muse
from rc3.finetune.config import load_finetune_config
from rc3.finetune.linguistic_prior import LinguisticPrior, answer_similarity, linguistic_prior_loss


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_muse_and_its_errors(tmp_path: Path) -> None:
    d = read_muse(write(tmp_path / "en-de.txt", "red rot\nred rote\nRed rot\n\ncircle\tKreis\n"))
    assert d == {"red": ["rot", "rote"], "circle": ["Kreis"]}  # lower-cased source, duplicates dropped
    with pytest.raises(DictionaryError, match=r"en-xx.txt:2: expected 'source target'"):
        read_muse(write(tmp_path / "en-xx.txt", "red rot\nthree words here\n"))
    with pytest.raises(DictionaryError, match="no word pairs"):
        read_muse(write(tmp_path / "empty.txt", "\n"))
    with pytest.raises(FileNotFoundError, match="code_switch.dictionaries"):
        read_muse(tmp_path / "missing.txt")


def test_switch_ratio_one_and_zero_capitals_and_punctuation() -> None:
    de = {"red": ["rot"], "circle": ["Kreis"], "left": ["links"]}
    all_in = CodeSwitcher([de], ratio=1.0, seed=0)
    assert all_in.switch("A red circle on the left.", "x") == "A rot Kreis on the links."
    assert all_in.switch("Red, (circle)!", "x") == "Rot, (Kreis)!"
    assert CodeSwitcher([de], ratio=0.0, seed=0).switch("A red circle on the left.", "x") == "A red circle on the left."


def test_switch_is_a_function_of_seed_and_example_and_spares_global_rng() -> None:
    dicts = [{"red": ["rot", "rote"], "circle": ["Kreis"]}, {"red": ["rouge"], "square": ["carré"]}]
    text = " ".join(["a red circle and a red square"] * 20)
    sw = CodeSwitcher(dicts, ratio=0.5, seed=3)
    random.seed(11)
    torch.manual_seed(11)
    np.random.seed(11)
    states = (random.getstate(), torch.get_rng_state(), np.random.get_state()[1].copy())
    first = sw.switch(text, "q1")
    assert random.getstate() == states[0] and torch.equal(torch.get_rng_state(), states[1])
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert CodeSwitcher(dicts, ratio=0.5, seed=3).switch(text, "q1") == first  # a new switcher, same answer
    assert sw.switch(text, "q2") != first and CodeSwitcher(dicts, 0.5, seed=4).switch(text, "q1") != first
    words = first.split()
    assert {"rouge"} <= set(words) and {"rot", "rote"} & set(words)  # both dictionaries are drawn from
    # a word known to both dictionaries is drawn from either; every switched word is one of its translations
    for orig, new in zip(text.split(), words):
        assert new == orig or new in {"red": {"rot", "rote", "rouge"}, "circle": {"Kreis"}, "square": {"carré"}}[orig]
    share = sum(a != b for a, b in zip(text.split(), words)) / sum(w in {"red", "circle", "square"} for w in text.split())
    assert 0.3 < share < 0.7  # ratio 0.5 of the known words (80 of them)


def test_config_switches_validate(tmp_path: Path) -> None:
    base = ["data.test=x", "data.train=y", "data.features=[f.h5]"]
    cfg = load_finetune_config(None, "xvnli", base)
    assert cfg.code_switch.dictionaries == [] and cfg.code_switch.ratio == 0.0 and not cfg.prior.enabled
    with pytest.raises(ConfigError, match="code_switch.dictionaries"):
        load_finetune_config(None, "xvnli", [*base, "code_switch.ratio=0.3"])
    with pytest.raises(ConfigError, match="code_switch.ratio"):
        load_finetune_config(None, "xvnli", [*base, "code_switch.ratio=1.5", "code_switch.dictionaries=[a.txt]"])
    with pytest.raises(ConfigError, match="prior.enabled"):
        load_finetune_config(None, "xvnli", [*base, "prior.enabled=true"])
    assert load_finetune_config(None, "xgqa", [*base, "data.answer_vocab=a.json", "prior.enabled=true"]).prior.enabled


def reference_prior(logits: np.ndarray, labels: np.ndarray, sim: np.ndarray, k: int) -> float:
    """L_sim written out: p = softmax(z); K = top-k of p; q = softmax(S[y, K]); mean (p_K - q)^2 over kept rows."""
    total, count = 0.0, 0
    for z, y in zip(logits, labels):
        if y < 0:
            continue
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        top = np.argsort(-p, kind="stable")[:k]
        s = sim[y, top]
        q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        total += float(((p[top] - q) ** 2).sum())
        count += k
    return total / count


def test_linguistic_prior_matches_its_equation_and_ignores_unanswerable() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(9, 5, generator=g)
    sim = answer_similarity(emb)
    e = emb / emb.norm(dim=1, keepdim=True)
    assert torch.allclose(sim, e @ e.T, atol=1e-6) and torch.allclose(sim.diagonal(), torch.ones(9), atol=1e-6)
    logits = torch.randn(6, 9, generator=g, requires_grad=True)
    labels = torch.tensor([0, 3, -1, 8, 2, 2])
    got = linguistic_prior_loss(logits, labels, sim, k=4)
    want = reference_prior(logits.detach().numpy(), labels.numpy(), sim.numpy(), 4)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[0].abs().sum() > 0  # the -1 row takes no part
    prior = LinguisticPrior(sim, k=4, weight=10.0)
    assert prior(logits.detach(), labels).item() == pytest.approx(10 * want, rel=1e-5)
    assert "similarity" not in prior.state_dict()  # rebuilt each run, never saved with the head


def test_prior_is_added_to_the_classifier_loss() -> None:
    from tiny import tiny_model_config

    from rc3.finetune.heads import ClassificationModel
    from rc3.modeling import RC3Model

    torch.manual_seed(0)
    rc3 = RC3Model.from_config(tiny_model_config(), 50)
    model = ClassificationModel(rc3, "roi", "xgqa", 6).eval()
    batch = {"input_ids": torch.randint(5, 50, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.bool),
             "roi": torch.randn(3, 4, 2048), "boxes": torch.rand(3, 4, 5), "roi_mask": torch.ones(3, 4, dtype=torch.bool),
             "labels": torch.tensor([1, 4, -1])}
    plain = model(batch)
    model.prior = LinguisticPrior(answer_similarity(torch.randn(6, 8)), k=3, weight=2.0)
    out = model(batch)
    assert torch.equal(out["loss_ce"], plain["loss"])
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + out["loss_prior"].item(), rel=1e-6)
    assert out["loss_prior"].item() == pytest.approx(
        2.0 * reference_prior(out["logits"].detach().numpy(), batch["labels"].numpy(), model.prior.similarity.numpy(), 3),
        rel=1e-5)


def test_world_dictionaries_are_muse_files_of_every_language(tmp_path: Path) -> None:
    from rc3.synthetic.dictionaries import write_muse_dictionaries
    from rc3.synthetic.languages import language

    info = write_muse_dictionaries(tmp_path)
    assert set(info["files"]) >= {"de", "es", "ru", "tr", "bn", "ko", "pt", "zh", "ja", "ar", "sw", "ta"}
    for lang, name in info["files"].items():
        pairs = read_muse(tmp_path / name)
        g = language(lang)
        for shape in ("circle", "square", "triangle", "star"):
            if shape in g.SHAPES:
                assert g.noun(shape) in pairs[shape], (lang, shape)
    es = read_muse(tmp_path / "en-es.txt")
    assert es["left"] == ["izquierda"] and es["red"] == ["rojo", "roja"]  # the phrase's distinctive word; both genders
    assert read_muse(tmp_path / "en-bn.txt")["left"] == ["বাম"]  # not the shared postposition দিকে
    assert read_muse(tmp_path / "en-de.txt")["red"] == ["rote", "roter", "rotes", "roten"]


# ---- wiring into the recipes ------------------------------------------------------------------------
def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model" / "model.safetensors"))


@pytest.mark.parametrize("task", ["xgqa", "xvnli", "marvl", "itr", "mmt"])
def test_off_by_default_is_todays_run_and_ratio_one_changes_it(task: str, tmp_path: Path, monkeypatch, request) -> None:
    from test_finetune import DATA, build_world, run_recipe  # noqa: F401  (same tiny data as the recipe tests)

    import rc3.finetune.classification as classification
    import rc3.finetune.itr as itr
    import rc3.finetune.mmt as mmt

    world = tmp_path / "world"
    build_world(world)
    model_dir = request.getfixturevalue("model_dir")
    default = run_recipe(task, world, model_dir, tmp_path / "default")
    with monkeypatch.context() as m:  # today's code path: no switching hook, no model hook
        m.setattr(classification, "switch_items", lambda items, cfg: items)
        m.setattr(itr, "switch_items", lambda items, cfg: items)
        m.setattr(mmt, "switch_examples", lambda examples, lang, cfg: examples)
        import rc3.finetune.xgqa as xgqa

        m.delattr(xgqa.XGQATask, "configure_model")
        today = run_recipe(task, world, model_dir, tmp_path / "today")
    assert default == today
    a, b = _weights(tmp_path / "default"), _weights(tmp_path / "today")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    words = __import__("test_finetune").WORDS["en"].split()  # every recipe trains on English
    dictionary = write(tmp_path / "en-de.txt", "".join(f"{w} W{i}\n" for i, w in enumerate(words)))
    run_recipe(task, world, model_dir, tmp_path / "switched", f"code_switch.dictionaries=[{dictionary}]",
               "code_switch.ratio=1.0")
    c = _weights(tmp_path / "switched")
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer, tokenizer_dir: Path) -> Path:
    from tiny import tiny_model_config

    from rc3.modeling import RC3Model

    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id,
                                 tokenizer.eos_id)
    out = tmp_path_factory.mktemp("init") / "rc3-tiny"
    model.save_pretrained(out, tokenizer_dir=tokenizer_dir)
    return out
