"""Use a trained RC3 model: embed, match, retrieve, classify and translate on one's own data.

    from rc3.inference import load
    m = load("runs/itr/model", device="cpu")              # any RC3 model directory, pretrained or finetuned
    text_emb = m.embed_texts(["a dog on the grass"], lang="en")
    image_emb = m.embed_images(["photos/1.jpg"])        # image files, PIL images or ROI features
    scores = m.match(["photos/1.jpg"], ["a dog", "a cat"], lang="en")   # ITM logits [images, texts]
    index = m.build_index(["photos/1.jpg", "photos/2.jpg"]); index.save("my.index")
    hits = m.search(m.load_index("my.index"), ["ein Hund"], lang="de", k=10)   # FAISS + ITM re-rank
    m.classify([("left.jpg", "right.jpg")], ["Ada dua anjing."], lang="id")  # a finetuned XVNLI/xGQA/MaRVL head
    m.translate(["a dog runs"], images=["photos/1.jpg"], src="en", tgt="de", num_beams=4)

What each function computes is what the finetuning recipes compute, so a finetuned model behaves
here as in its evaluation:

* `embed_texts`: the text-only TR (top encoder state at [BOS]); `embed_images`: the image-only VtR
  (`[CLS] image`, no text). A model finetuned for retrieval (task_head.json says "itr") passes both
  through its dual-encoder projections; any other model gives the raw states. Both are L2-normalised
  (inner product = cosine), as the retrieval recipe uses them.
* `match`: the ITM logit of `[CLS] image [BOS] text [LANG]` (the pretrained ITM head, or the one the
  ITR recipe finetuned); a higher logit means a better match.
* `search`: FAISS finds each query's top-k images by embedding similarity and the ITM head re-ranks
  them (rc3.finetune.retrieval, the recipe's code path); k="all" scores every image, which is the recipe's
  brute-force ranking (ties broken by image index). Indexes keep the images' visual inputs so that
  re-ranking works after a reload, and remember which model built them.
* `classify`: the finetuned classifier head over the VtR of `[CLS] image(s) [BOS] text [LANG]`;
  label names come from task_head.json (MaRVL takes pairs of images).
* `translate`: beam search with the target language tag forced first (the MMT recipe's decoding),
  with or without the image.

Visual inputs follow the model's visual mode: ROI features ({"roi"/"features": [n, 2048], "boxes":
[n, 5] normalised, or [n, 4] in pixels with "img_w"/"img_h"}), keys of a feature store (`features=`)
or image files / PIL images whose features are looked up by file stem in the store or extracted by
a local Faster R-CNN (`detector_weights=`); patch mode reads pixels from files or PIL images.
`detector_weights` takes either detector of tools/extract_roi_features.py, told apart by the file's
contents (rc3.vision.extractors.weights_kind): the bottom-up-attention R101-C4 that
tools/convert_butd_weights.py writes, IGLUE's feature space, for models trained on IGLUE features;
or torchvision's COCO fasterrcnn_resnet50_fpn, another feature space (`detector_kind=` insists on
one). Features extracted here equal what the tool writes for the same image and weights.
Long inputs show a progress bar. Nothing here imports the training code (DeepSpeed, the trainer).
"""
from rc3.inference.api import ARG_NAMES, PROGRESS_MIN, K, Prediction, RC3Inference, TextTruncatedWarning, load
from rc3.inference.images import ImageInput, collate_images, normalise_pixels
from rc3.inference.index import INDEX_FORMAT, Hit, ImageIndex, model_fingerprint

__all__ = ["ARG_NAMES", "INDEX_FORMAT", "K", "PROGRESS_MIN", "Hit", "ImageIndex", "ImageInput", "Prediction",
           "RC3Inference", "TextTruncatedWarning", "collate_images", "load", "model_fingerprint", "normalise_pixels"]
