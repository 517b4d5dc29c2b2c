"""`RC3Inference` (embed, match, search, classify, translate over one loaded model directory) and `load`,
which builds it from any RC3 model directory; the package docstring (rc3/inference/__init__.py) says what
each function computes."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from rc3.data.collate import pad_batch
from rc3.data.features import normalise_boxes
from rc3.data.images import ImageDecodeError, load_image, resize_uint8
from rc3.finetune.heads import HEAD_META, ClassificationModel, TaskModel
from rc3.finetune.registry import DOWNSTREAM
from rc3.finetune.retrieval import FaissIndex, iter_reranked, rank_candidates
from rc3.inference.images import ImageInput, collate_images
from rc3.inference.index import Hit, ImageIndex, model_fingerprint
from rc3.modeling import RC3Model
from rc3.modeling.model import RC3_CONFIG_FILE, run_directory_hint
from rc3.modeling.visual import visual_mode
from rc3.modeling.visual_inputs import ImageLocator, VisualSource, key_candidates, pad_regions
from rc3.tokenization import RC3Tokenizer, check_lang

K = Union[int, Literal["all"]]
PROGRESS_MIN = 256  # inputs shorter than this get no progress bar


class TextTruncatedWarning(UserWarning):
    """A text had more pieces than the model reads (max_text_len); only its beginning was used."""


# How errors name the inputs: these Python names by default; the `rc3` command passes its flags.
ARG_NAMES = {"features": "features=[store.h5]", "detector_weights": "detector_weights=<weights>"}


@dataclass
class Prediction:
    label: str
    label_id: int
    probability: float
    probabilities: dict[str, float] = field(repr=False)


class RC3Inference:
    """A loaded model directory and what it can do; build with `load(...)` (see the docstring of rc3/inference/__init__.py)."""

    def __init__(self, rc3: RC3Model, tokenizer: RC3Tokenizer, task_model: Optional[TaskModel] = None,
                 device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None, batch_size: int = 32,
                 max_text_len: int = 80, features: Sequence[str | os.PathLike] = (),
                 images: Optional[str | os.PathLike] = None, detector_weights: Optional[str | os.PathLike] = None,
                 num_regions: int = 36, progress: bool = True, model_id: str = "",
                 detector_kind: Optional[str] = None, arg_names: Optional[Mapping[str, str]] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = dtype
        module: torch.nn.Module = task_model if task_model is not None else rc3
        module.to(device=self.device, dtype=dtype).eval()
        self.rc3, self.task_model, self.tokenizer = rc3, task_model, tokenizer
        self.mode = task_model.mode if task_model is not None else rc3.cfg.visual_mode
        self.task = task_model.task if task_model is not None else None
        self.batch_size, self.max_text_len, self.progress, self.num_regions = batch_size, max_text_len, progress, num_regions
        self.model_id = model_id
        vm = visual_mode(self.mode)
        self.needs_roi, self.needs_pixels = vm.needs("features"), vm.needs("pixels")
        self.source = None
        if features and self.needs_roi:
            self.source = VisualSource("roi", list(features), None, num_regions, rc3.cfg.image_size)
        self.locator = ImageLocator(images) if images is not None else None
        self.detector_weights, self.detector_kind, self._detector = detector_weights, detector_kind, None
        self.arg_names = {**ARG_NAMES, **(arg_names or {})}

    # ---- inputs ------------------------------------------------------------------------------
    def _bar(self, iterable: Iterable, total: int, desc: str, items: Optional[int] = None) -> Iterable:
        """A progress bar over `iterable` (`total` steps) when the input (`items`, default total) is long."""
        long_input = (total if items is None else items) >= PROGRESS_MIN
        return tqdm(iterable, total=total, desc=desc, disable=not (self.progress and long_input),
                    dynamic_ncols=True, leave=False)

    def _batches(self, n: int, desc: str) -> Iterator[range]:
        starts = range(0, n, self.batch_size)
        for a in self._bar(starts, len(starts), desc, items=n):
            yield range(a, min(a + self.batch_size, n))

    def encode_texts(self, texts: Sequence[str], lang: str | Sequence[str], what: str = "texts") -> list[list[int]]:
        """Encoder ids `[BOS] pieces [LANG]` of each text (lang: one code, or one per text).

        An empty or whitespace-only text is an error naming it (`what`[i]): it would be encoded as
        [BOS] [LANG] alone and give an embedding, a label or a translation of nothing. A text longer
        than `max_text_len` is cut to its first max_text_len - 2 pieces, with a TextTruncatedWarning
        saying so: the model never sees the rest, which the caller should know."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{what}[{i}] is a {type(text).__name__}, not a str")
            if not text.strip():
                raise ValueError(f"{what}[{i}] is {'empty' if not text else 'whitespace only'} ({text!r}); "
                                 "give a non-empty text")
        langs = [lang] * len(texts) if isinstance(lang, str) else list(lang)
        if len(langs) != len(texts):
            raise ValueError(f"{len(texts)} {what} but {len(langs)} languages")
        for code in set(langs):
            check_lang(code)
        limit = self.max_text_len - 2  # [BOS] and the language tag take two of the model's positions
        out = []
        for i, (pieces, code) in enumerate(zip(self.tokenizer.segment(texts), langs)):
            if len(pieces) > limit:
                warnings.warn(f"{what}[{i}] is {len(pieces)} pieces long, over the limit of {limit} pieces "
                              f"(max_text_len {self.max_text_len} less [BOS] and the language tag); only its first "
                              f"{limit} pieces are used", TextTruncatedWarning, stacklevel=3)
            out.append(self.tokenizer.encoder_ids(pieces, code, self.max_text_len)[0])
        return out

    def _text_batch(self, ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        batch, mask = pad_batch(list(ids), self.tokenizer.pad_id)
        return batch.to(self.device), mask.to(self.device)

    def _visual_batch(self, items: Sequence[Mapping[str, Tensor]], suffix: str = "") -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in collate_images(items, suffix).items()}

    def _pixels_of(self, img: Image.Image) -> Tensor:
        return resize_uint8(img, self.rc3.cfg.image_size).contiguous()

    def _roi_of(self, key: Optional[str], img: Optional[Image.Image], what: str) -> dict[str, Tensor]:
        if self.source is not None and key is not None:
            for k in key_candidates(key):
                if self.source._store_key(k) is not None:
                    return self.source.load(k)
        if self.detector_weights is not None:
            if img is None:
                raise KeyError(f"{what}: not found in the feature store(s) and no image to extract regions from")
            return self._extract(img)
        if self.source is not None:
            raise KeyError(f"{what}: no ROI features under key {key!r} in {self.source._stores_text()}; "
                           "add the image to the store (tools/extract_roi_features.py) or give "
                           f"{self.arg_names['detector_weights']} to extract it")
        raise ValueError(f"{what}: visual mode {self.mode!r} needs ROI features: give {self.arg_names['features']} "
                         f"(looked up by file name or stem) or {self.arg_names['detector_weights']} (a detector to "
                         "extract them: tools/convert_butd_weights.py output, or torchvision COCO weights)")

    @property
    def detector(self) -> Any:
        """The region extractor of `detector_weights`, built on first use."""
        if self._detector is None:
            from rc3.vision.extractors import open_extractor

            assert self.detector_weights is not None  # asked for only when weights were given (_roi_of)
            try:
                self._detector = open_extractor(self.detector_weights, self.detector_kind, str(self.device),
                                                self.num_regions)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"{self.arg_names['detector_weights']}: {err}") from None
        return self._detector

    def _extract(self, img: Image.Image) -> dict[str, Tensor]:
        r = self.detector.extract_one(img)  # no region at all: every slot masked, as a store holding it gives
        return pad_regions(r.features, normalise_boxes(r.boxes, r.img_w, r.img_h), self.num_regions)

    def load_image(self, item: ImageInput) -> dict[str, Tensor]:
        """One image's visual tensors for this model's mode: roi/boxes/roi_mask and/or pixels (uint8, resized)."""
        img: Optional[Image.Image]  # the decoded image, when there is one
        if isinstance(item, Mapping):
            return self._from_mapping(item)
        if isinstance(item, Image.Image):
            img = item if item.mode == "RGB" else item.convert("RGB")
            name = Path(getattr(item, "filename", "") or "").stem or None
            out = self._roi_of(name, img, f"PIL image {name or ''}".strip()) if self.needs_roi else {}
            if self.needs_pixels:
                out["pixels"] = self._pixels_of(img)
            return out
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if not path.is_file() and self.locator is not None:
                path = self.locator.find(str(item)) or path
            img = None
            if path.is_file() and (self.needs_pixels or self.detector_weights is not None):
                try:
                    img = load_image(path.read_bytes())
                except ImageDecodeError as err:
                    raise ImageDecodeError(f"{path}: {err}") from None
            elif not path.is_file() and (self.needs_pixels or self.source is None):
                raise FileNotFoundError(f"image {str(item)!r}: no such file" + (
                    f" (nor under {self.locator.root})" if self.locator is not None else "")
                    + ("" if self.needs_pixels else " and no feature store (features=) to look it up in"))
            key = path.name if path.is_file() else str(item)
            out = self._roi_of(key, img, f"image {str(item)!r}") if self.needs_roi else {}
            if self.needs_pixels:
                assert img is not None  # a missing file raised above; an existing one was read
                out["pixels"] = self._pixels_of(img)
            return out
        raise TypeError(f"an image is a file path, a PIL image or a dict of ROI features, not {type(item).__name__}")

    def _from_mapping(self, item: Mapping[str, Any]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.needs_roi:
            feats = item.get("roi", item.get("features"))
            boxes = item.get("boxes")
            if feats is None or boxes is None:
                raise KeyError(f"ROI input needs 'roi' (or 'features') and 'boxes'; got keys {sorted(item)}")
            feats = np.asarray(torch.as_tensor(feats).float())
            boxes = np.asarray(torch.as_tensor(boxes).float())
            if boxes.ndim == 2 and boxes.shape[1] == 4:
                if "img_w" not in item or "img_h" not in item:
                    raise KeyError("boxes [n, 4] are in pixels and need 'img_w' and 'img_h' (or give normalised [n, 5])")
                boxes = normalise_boxes(boxes, float(item["img_w"]), float(item["img_h"]))
            if feats.ndim != 2 or feats.shape[1] != self.rc3.cfg.roi_dim:
                raise ValueError(f"ROI features must be [n, {self.rc3.cfg.roi_dim}], got {tuple(feats.shape)}")
            out.update(pad_regions(feats, boxes, self.num_regions))
        if self.needs_pixels:
            image = item.get("image")
            if image is None:
                raise KeyError(f"visual mode {self.mode!r} needs pixels: add 'image' (a path or PIL image) to the dict")
            img = image if isinstance(image, Image.Image) else load_image(Path(image).read_bytes())
            out["pixels"] = self._pixels_of(img.convert("RGB"))
        return out

    def load_images(self, images: Sequence[ImageInput]) -> list[dict[str, Tensor]]:
        images = list(images)
        return [self.load_image(x) for x in self._bar(images, len(images), "load images")]

    @staticmethod
    def image_name(item: ImageInput, i: int) -> str:
        if isinstance(item, (str, os.PathLike)):
            return str(item)
        if isinstance(item, Image.Image):
            filename = getattr(item, "filename", "")  # set on images opened from a file
            if filename:
                return str(filename)
        if isinstance(item, Mapping) and item.get("name"):
            return str(item["name"])
        return f"image{i}"

    # ---- embeddings --------------------------------------------------------------------------
    def _itr(self) -> Any:
        return self.task_model if self.task == "itr" else None

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], lang: str | Sequence[str]) -> Tensor:
        """L2-normalised text embeddings [N, D] (TR, through the ITR projection when the model has one)."""
        return self._embed_ids(self.encode_texts(texts, lang))

    @torch.inference_mode()
    def _embed_ids(self, ids: Sequence[Sequence[int]]) -> Tensor:
        # Batches of similar lengths (padding is wasted work), results put back in the input order.
        order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
        out = []
        for idx in self._batches(len(ids), "embed texts"):
            batch = self._text_batch([ids[order[j]] for j in idx])
            itr = self._itr()
            out.append(itr.text_embeddings(*batch) if itr is not None
                       else torch.nn.functional.normalize(self.rc3.tr(*batch).float(), dim=-1))
        if not out:
            return torch.zeros(0, self.embed_dim)
        emb = torch.cat(out).float().cpu()
        return emb[torch.argsort(torch.tensor(order))]

    @torch.inference_mode()
    def embed_images(self, images: Sequence[ImageInput]) -> Tensor:
        """L2-normalised image embeddings [N, D] (image-only VtR, through the ITR projection when present)."""
        return self._embed_loaded(self.load_images(images))

    def _embed_loaded(self, visual: Sequence[Mapping[str, Tensor]]) -> Tensor:
        out = []
        for idx in self._batches(len(visual), "embed images"):
            batch = self._visual_batch([visual[i] for i in idx])
            itr = self._itr()
            if itr is not None:
                out.append(itr.image_embeddings(batch))
            else:
                empty = torch.zeros(len(idx), 0, dtype=torch.long, device=self.device)
                vtr = self.rc3.vtr(empty, empty.bool(), batch, self.mode)
                out.append(torch.nn.functional.normalize(vtr.float(), dim=-1))
        return torch.cat(out).float().cpu() if out else torch.zeros(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        itr = self._itr()
        return itr.dual.image_proj.out_features if itr is not None else self.rc3.d_model

    # ---- ITM ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def _pair_scores(self, visual: Sequence[Mapping[str, Tensor]], text_ids: Sequence[Sequence[int]],
                     image_idx: Tensor, text_idx: Tensor) -> Tensor:
        """ITM logits of pairs (image_idx[...], text_idx[...]) -> same shape, `batch_size` pairs per forward;
        each distinct image of a batch goes through the visual front end once (RC3Model.encode)."""
        flat_i, flat_t = image_idx.reshape(-1), text_idx.reshape(-1).tolist()
        out = []
        for idx in self._batches(len(flat_t), "ITM scores"):
            ids, mask = self._text_batch([text_ids[flat_t[j]] for j in idx])
            images, where = torch.unique(flat_i[idx.start:idx.stop], return_inverse=True)
            vis = self._visual_batch([visual[i] for i in images.tolist()])
            vtr = self.rc3.vtr(ids, mask, vis, self.mode, visual_index=where.to(self.device))
            out.append(self.rc3.itm_logits(vtr).float().cpu())
        return (torch.cat(out) if out else torch.zeros(0)).reshape(image_idx.shape)

    def match(self, images: Sequence[ImageInput], texts: Sequence[str], lang: str | Sequence[str],
              pairs: bool = False) -> Tensor:
        """ITM logits: [len(images), len(texts)] for every pair, or [N] for (images[i], texts[i]) with `pairs`."""
        visual, ids = self.load_images(images), self.encode_texts(texts, lang)
        if pairs:
            if len(visual) != len(ids):
                raise ValueError(f"match(pairs=True): {len(visual)} images but {len(ids)} texts")
            n = torch.arange(len(ids))
            return self._pair_scores(visual, ids, n, n)
        i = torch.arange(len(visual))[:, None].expand(-1, len(ids))
        t = torch.arange(len(ids))[None, :].expand(len(visual), -1)
        return self._pair_scores(visual, ids, i, t)

    # ---- retrieval ---------------------------------------------------------------------------
    def build_index(self, images: Sequence[ImageInput], names: Optional[Sequence[str]] = None,
                    on_unreadable: Optional[Callable[[str, str], None]] = None) -> ImageIndex:
        """Embed `images` and put them into an exact inner-product FAISS index (saved with `.save(dir)`).

        With `on_unreadable`, an image file that cannot be read or decoded is left out and reported
        as on_unreadable(name, reason) instead of stopping the whole index (a folder of photos often
        holds a broken download or a stray file); missing ROI features still stop it."""
        images = list(images)
        if not images:
            raise ValueError("build_index: no images")
        names = [self.image_name(x, i) for i, x in enumerate(images)] if names is None else list(names)
        if len(names) != len(images):
            raise ValueError(f"build_index: {len(names)} names for {len(images)} images")
        if on_unreadable is None:
            visual = self.load_images(images)
        else:
            visual, kept = [], []
            for name, item in zip(names, self._bar(images, len(images), "load images")):
                try:
                    visual.append(self.load_image(item))
                except (ImageDecodeError, PermissionError, IsADirectoryError) as err:
                    on_unreadable(name, str(err).removeprefix(f"{name}: "))
                    continue
                kept.append(name)
            names = kept
            if not visual:
                raise ValueError(f"build_index: none of the {len(images)} images could be read")
        with torch.inference_mode():
            emb = self._embed_loaded(visual)
        index = FaissIndex(emb.shape[1])
        index.add(emb)
        return ImageIndex(names, emb, visual, self.mode, self.model_id, index)

    def load_index(self, directory: str | os.PathLike, check_model: bool = True) -> ImageIndex:
        """Read an index from disk; refuses one built by another model (its embeddings would not fit)."""
        index = ImageIndex.load(directory)
        if index.mode != self.mode:
            raise ValueError(f"{directory}: built in visual mode {index.mode!r}, this model uses {self.mode!r}")
        if index.embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"{directory}: {index.embeddings.shape[1]}-d embeddings, this model gives {self.embed_dim}-d")
        if check_model and index.model_id != self.model_id:
            raise ValueError(f"{directory} was built by another model ({index.model_id}, this one is {self.model_id}); "
                             "rebuild it with this model, or pass check_model=False")
        return index

    def search(self, index: ImageIndex, queries: Sequence[str], lang: str | Sequence[str], k: K = 10,
               rerank: bool = True) -> list[list[Hit]]:
        """Each query's top-k images: FAISS candidates re-ranked by the ITM head (or by similarity alone
        with rerank=False). k="all" (or k >= len(index)) scores every image: the brute-force ranking."""
        if len(index) == 0:
            raise ValueError("search: the index is empty")
        if k != "all" and (not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive int or 'all', got {k!r}")
        queries = [queries] if isinstance(queries, str) else list(queries)
        text_ids = self.encode_texts(queries, lang, "queries")  # once: a truncation is reported once
        q_emb = self._embed_ids(text_ids)
        exhaustive = k == "all" or k >= len(index)
        if not rerank:
            kk = len(index) if exhaustive else int(k)
            sims, ids = index.faiss.search(q_emb, kk)
            ids, sims = rank_candidates(ids, sims)
            return [[Hit(r, int(i), index.names[int(i)], float(s), float(s)) for r, (i, s) in enumerate(zip(row_i, row_s))]
                    for row_i, row_s in zip(ids, sims)]

        def rerank_fn(q_idx: Tensor, cands: Tensor) -> Tensor:
            return self._pair_scores(index.visual, text_ids, cands, q_idx[:, None].expand_as(cands))

        out: list[list[Hit]] = []
        chunk = max(1, self.batch_size // 4)
        for part in iter_reranked(q_emb, index.embeddings, k, rerank_fn, chunk_size=chunk, index=index.faiss,
                                  max_pairs=4 * self.batch_size):
            for q, ids, scores in zip(part.query_idx.tolist(), part.cand_ids, part.scores):
                sims = index.embeddings[ids] @ q_emb[q]
                out.append([Hit(r, int(i), index.names[int(i)], float(s), float(m))
                            for r, (i, s, m) in enumerate(zip(ids.tolist(), scores.tolist(), sims.tolist()))])
        return out

    # ---- classification ----------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        if not isinstance(self.task_model, ClassificationModel):
            raise ValueError(f"this model has no classifier head (task: {self.task or 'none, pretrained'}); "
                             "load the model directory an XVNLI / xGQA / MaRVL finetuning wrote")
        m = self.task_model
        # heads saved before the names were recorded in task_head.json: the task's own (rc3.finetune.registry)
        names = m.labels or (list(DOWNSTREAM.get(m.task).labels) if m.task in DOWNSTREAM else None)
        return list(names) if names and len(names) == m.num_labels else [str(i) for i in range(m.num_labels)]

    @torch.inference_mode()
    def classify(self, images: Sequence[ImageInput | tuple[ImageInput, ImageInput]], texts: Sequence[str],
                 lang: str | Sequence[str]) -> list[Prediction]:
        """Label of each (image, text) example (a pair of images per example for MaRVL) by the finetuned head."""
        labels = self.labels
        task_model = self.task_model
        assert task_model is not None  # self.labels raised if the model has no classifier head
        images = list(images)
        ids = self.encode_texts(texts, lang)
        if len(images) != len(ids):
            raise ValueError(f"classify: {len(images)} images but {len(ids)} texts")
        two = [isinstance(x, (tuple, list)) for x in images]
        if any(two) and not all(two):
            raise ValueError("classify: give either one image per example or a pair per example, not both")
        out: list[Prediction] = []
        for idx in self._batches(len(ids), f"classify ({self.task})"):
            batch: dict[str, Any] = {}
            if two and two[0]:
                # every example is a pair (`two`, checked above): the filter only narrows the type
                pairs = [p for p in (images[j] for j in idx) if isinstance(p, (tuple, list))]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError("classify: a pair of images per example means exactly two")
                batch.update(self._visual_batch([self.load_image(p[0]) for p in pairs]))
                batch.update(self._visual_batch([self.load_image(p[1]) for p in pairs], suffix="2"))
            else:
                singles = [x for x in (images[j] for j in idx) if not isinstance(x, (tuple, list))]  # all (`two`)
                batch.update(self._visual_batch([self.load_image(x) for x in singles]))
            batch["input_ids"], batch["attention_mask"] = self._text_batch([ids[j] for j in idx])
            probs = torch.softmax(task_model(batch)["logits"].float(), dim=-1).cpu()
            for row in probs:
                best = int(row.argmax())
                out.append(Prediction(labels[best], best, float(row[best]),
                                      {name: float(p) for name, p in zip(labels, row.tolist())}))
        return out

    # ---- translation -------------------------------------------------------------------------
    @torch.inference_mode()
    def translate(self, texts: Sequence[str], images: Optional[Sequence[ImageInput]] = None, *, src: str, tgt: str,
                  num_beams: int = 4, max_new_tokens: int = 64) -> list[str]:
        """Beam-search translations of `texts` from `src` into `tgt`, reading each text's image when given."""
        ids = self.encode_texts(texts, src)
        tgt_id = self.tokenizer.lang_id(tgt)
        if images is not None and len(images) != len(ids):
            raise ValueError(f"translate: {len(ids)} texts but {len(images)} images")
        out: list[str] = []
        for idx in self._batches(len(ids), f"translate {src}->{tgt}"):
            input_ids, mask = self._text_batch([ids[j] for j in idx])
            visual = self._visual_batch([self.load_image(images[j]) for j in idx]) if images is not None else None
            seqs = self.rc3.generate(input_ids, mask, tgt_id, visual, self.mode, num_beams=num_beams,
                                     max_new_tokens=max_new_tokens)
            out += [self.tokenizer.decode(s.tolist()) for s in seqs]
        return out


def load(model_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: Optional[torch.dtype | str] = None,
         batch_size: int = 32, max_text_len: int = 80, features: Sequence[str | os.PathLike] = (),
         images: Optional[str | os.PathLike] = None, detector_weights: Optional[str | os.PathLike] = None,
         num_regions: int = 36, progress: bool = True, detector_kind: Optional[str] = None,
         arg_names: Optional[Mapping[str, str]] = None) -> RC3Inference:
    """Load any RC3 model directory (pretrained, or finetuned: task_head.json) on `device` in `dtype`.

    `features`: ROI feature stores to look images up in (by key or file stem); `images`: a folder image
    keys are resolved in; `detector_weights`: a local Faster R-CNN to extract ROI features of new images,
    the bottom-up-attention one of tools/convert_butd_weights.py (IGLUE's features) or torchvision's COCO
    fasterrcnn_resnet50_fpn, told apart by the file (`detector_kind` "butd" / "torchvision-coco" insists
    on one); `arg_names`: how errors name these inputs (the `rc3` command passes its flags)."""
    names = {**ARG_NAMES, **(arg_names or {})}
    if detector_weights is not None:  # checked before the model loads: a wrong file fails at once
        from rc3.vision.extractors import weights_kind

        try:
            found = weights_kind(detector_weights)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{names['detector_weights']}: {err}") from None
        if detector_kind is not None and detector_kind != found:
            raise ValueError(f"{names['detector_weights']}: {detector_weights} holds {found} weights, not {detector_kind}")
    d = Path(model_dir)
    if not (d / RC3_CONFIG_FILE).is_file():
        raise FileNotFoundError(run_directory_hint(d) or
                                f"{d}: no {RC3_CONFIG_FILE}; give an RC3 model directory (pretrained or finetuned)")
    if isinstance(dtype, str):
        dtypes = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                  "fp16": torch.float16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype {dtype!r}: one of {', '.join(dtypes)}")
        dtype = dtypes[dtype]
    tokenizer = RC3Tokenizer.from_dir(d)
    task_model = TaskModel.from_pretrained(d) if (d / HEAD_META).is_file() else None
    rc3 = task_model.rc3 if task_model is not None else RC3Model.from_pretrained(d)
    if rc3.mbart.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{d}: the model has {rc3.mbart.config.vocab_size} token embeddings but the tokenizer "
                         f"{tokenizer.vocab_size} ids; the directory mixes files of two models")
    return RC3Inference(rc3, tokenizer, task_model, device, dtype, batch_size, max_text_len, features, images,
                        detector_weights, num_regions, progress, model_fingerprint(d), detector_kind, names)
