"""Measuring `rc3.add_language` and code-switching at small scale (tools/repro_add_language.py).

* `world_parallel`: English-X parallel text of the synthetic world's grammar for a language that
  pretraining never saw: captions of freshly sampled scenes (their own random stream, not the world's
  images), and, where the language has those grammars, XVNLI-style claims and xGQA-style questions.
* `text_alignment`: en -> X nearest-neighbour retrieval with the TR, no finetuning (how aligned X is).
* `xflickrco_parallel`: the real-text split of tools/repro_text.py (xFlickr&CO images by id; the last
  `holdout` held out), as (English, X) training pairs and held-out evaluation captions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from rc3 import atomic
from rc3.synthetic.grammar import Asker, Captioner, Claimer
from rc3.synthetic.languages import language
from rc3.synthetic.world import COLOURS, POSITIONS, sample_scene, shuffled, stream


def world_parallel(lang: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (English, `lang`) sentence pairs of the synthetic grammar, from the stream "add-language-<lang>"."""
    en, x = language("en"), language(lang)
    assert isinstance(en, Captioner) and isinstance(en, Claimer) and isinstance(en, Asker)  # English speaks every grammar
    if not isinstance(x, Captioner):
        raise KeyError(f"the synthetic language {lang!r} has no caption grammar to draw parallel text from")
    rng = stream(seed, f"add-language-{lang}")
    kinds = ["caption"] + (["claim"] if isinstance(x, Claimer) else []) + (["question"] if isinstance(x, Asker) else [])
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        scene = sample_scene(rng, 1, 4)
        objs = shuffled(rng, scene.objects)
        kind = kinds[int(rng.integers(len(kinds)))]
        o = objs[0]
        if kind == "caption":
            pairs.append((en.caption(objs, int(rng.integers(en.n_styles))), x.caption(objs)))
        elif kind == "claim":
            assert isinstance(x, Claimer)  # "claim" is among the kinds only for a Claimer (above)
            if rng.random() < 0.5:
                c = COLOURS[int(rng.integers(len(COLOURS)))]
                pairs.append((en.claim_colour(o.shape, c), x.claim_colour(o.shape, c)))
            else:
                p = POSITIONS[int(rng.integers(len(POSITIONS)))]
                pairs.append((en.claim_position(o.shape, p), x.claim_position(o.shape, p)))
        else:
            assert isinstance(x, Asker)  # "question" is among the kinds only for an Asker (above)
            which = int(rng.integers(4))
            if which == 0:
                pairs.append((en.ask_colour(o.shape), x.ask_colour(o.shape)))
            elif which == 1:
                pairs.append((en.ask_position(o.shape), x.ask_position(o.shape)))
            elif which == 2:
                pairs.append((en.ask_shape(o.position), x.ask_shape(o.position)))
            else:
                pairs.append((en.ask_exists(o.colour, o.shape), x.ask_exists(o.colour, o.shape)))
    return pairs


def write_tsv(path: Path, pairs: Sequence[tuple[str, str]]) -> Path:
    """english<TAB>X lines, written atomically."""
    return atomic.write_text(path, "".join(f"{a}\t{b}\n" for a, b in pairs))


def text_alignment(model_dir: Path, en: Sequence[str], others: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Accuracy@1 (%) of en -> X retrieval with the TR among row-aligned captions, per language, and chance."""
    from rc3.modeling import RC3Model
    from rc3.synthetic.repro.sentence_retrieval import embed_texts, nn_accuracy
    from rc3.tokenization import RC3Tokenizer

    model, tok = RC3Model.from_pretrained(model_dir), RC3Tokenizer.from_dir(model_dir)
    q = embed_texts(model, tok, list(en), "en")
    out = {lang: 100 * nn_accuracy(q, embed_texts(model, tok, list(texts), lang)) for lang, texts in others.items()}
    out["chance"] = 100 / max(1, len(en))
    return out


def world_captions(world: Path, langs: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """English and `langs` captions of the world's xFlickr&CO test images, aligned by image id."""
    def read(lang: str) -> dict[str, str]:
        path = world / "downstream/xFlickrCO/annotations" / lang / "test.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {str(r["id"]): r["sentences"][0] for r in rows}

    en = read("en")
    tables = {lang: read(lang) for lang in langs}
    ids = sorted(set(en).intersection(*(set(t) for t in tables.values())))
    return [en[i] for i in ids], {lang: [t[i] for i in ids] for lang, t in tables.items()}


def xflickrco_parallel(data: Path, langs: Sequence[str], holdout: int = 500
                       ) -> tuple[dict[str, list[tuple[str, str]]], list[str], dict[str, list[str]]]:
    """Per language the (English, X) first captions of the training images, and the held-out English and
    X captions (row-aligned), with the split of tools/repro_text.py (sorted ids, the last `holdout` held out)."""
    def read(lang: str) -> dict[str, str]:
        path = data / "iglue/xFlickrCO/annotations" / lang / "test.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"xFlickr&CO annotations missing: {path} (IGLUE layout expected under --data)")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {str(r["id"]): r["sentences"][0].strip() for r in rows if r.get("sentences")}

    en = read("en")
    tables = {lang: read(lang) for lang in langs}
    # The split must be repro_text's, which intersects all eight languages of xFlickr&CO.
    every = [en, *tables.values(), *(read(lang) for lang in ("de", "es", "id", "ja", "ru", "tr", "zh") if lang not in tables)]
    ids = sorted(set.intersection(*(set(t) for t in every)))
    train_ids, held = ids[:-holdout], ids[-holdout:]
    pairs = {lang: [(en[i], t[i]) for i in train_ids] for lang, t in tables.items()}
    return pairs, [en[i] for i in held], {lang: [t[i] for i in held] for lang, t in tables.items()}

