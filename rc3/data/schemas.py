"""WebDataset shard schemas for the three pretraining corpora: field names, encoding, safe decoding.

One sample is one image (Ds, Dw) or one text pair (Dt):
- Ds: `__key__`, `roi.npy` float16 [36,2048], `boxes.npy` float32 [36,5], `captions.json`
  {lang: text} (>= 1 language), optional `jpg`, optional `nroi.txt`.
- Dw: `__key__`, `jpg`, `texts.json` {lang: text} (>= 2 languages, weakly aligned).
- Dt: `__key__`, `pair.json` {"src_lang", "tgt_lang", "src", "tgt"}.

`nroi.txt` is written only for images whose detector output had fewer than 36 boxes: the arrays
are zero-padded to 36 rows and `nroi.txt` holds the number of real rows (decoders report
`num_rois`, 36 when the field is absent), so a collator can mask the padding.

Decoding never unpickles: npy with `np.load(allow_pickle=False)`, json with `json.loads`, images
with PIL (`verify()` first, then a fresh decode). Every problem raises `SampleError(field, reason)`
so pipelines can skip and count broken samples by field.
"""
from __future__ import annotations

import functools
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

NUM_ROIS = 36
FEATURE_DIM = 2048
BOX_DIM = 5

DS_FIELDS = ("roi.npy", "boxes.npy", "captions.json")
DS_OPTIONAL = ("jpg", "nroi.txt")
DW_FIELDS = ("jpg", "texts.json")
DT_FIELDS = ("pair.json",)

_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


class SampleError(ValueError):
    """A sample field is missing or broken; `field` names it, `reason` says what is wrong."""

    def __init__(self, field: str, reason: str, key: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.key = key
        where = f" in sample {key!r}" if key is not None else ""
        super().__init__(f"field {field!r}{where}: {reason}")


@dataclass
class DsSample:
    key: str
    roi: np.ndarray  # float16 [36, 2048]
    boxes: np.ndarray  # float32 [36, 5]
    captions: dict[str, str]
    num_rois: int = NUM_ROIS
    image: Image.Image | None = None  # RGB, present when the shard carries `jpg`


@dataclass
class DwSample:
    key: str
    image: Image.Image  # RGB
    texts: dict[str, str]


@dataclass
class DtSample:
    key: str
    src_lang: str
    tgt_lang: str
    src: str
    tgt: str


# --------------------------------------------------------------------------------------------
# encoding (builders -> TarWriter)
# --------------------------------------------------------------------------------------------
def check_key(key: str) -> str:
    """WebDataset splits a member name at the first '.', so keys may hold only [A-Za-z0-9_-]."""
    if not isinstance(key, str) or not _KEY_OK.match(key):
        raise ValueError(f"shard key {key!r} must be non-empty and use only letters, digits, '_' and '-'")
    return key


def _npy_bytes(arr: np.ndarray) -> bytes:
    if arr.flags.c_contiguous and arr.dtype.fields is None and not arr.dtype.hasobject:  # np.save's header, then the raw C-order bytes
        return _npy_header(arr.dtype.str, arr.shape) + arr.tobytes()
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header np.save writes for a C-contiguous array of this dtype and shape: np.save's own
    output for a zero array, less its data (building the header per call cost ~50 us a sample)."""
    zeros = np.zeros(shape, dtype=np.dtype(dtype))
    buf = io.BytesIO()
    np.save(buf, zeros, allow_pickle=False)
    return buf.getvalue()[:len(buf.getvalue()) - zeros.nbytes]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _check_texts(texts: dict[str, str], field: str, min_langs: int) -> dict[str, str]:
    if not isinstance(texts, dict) or len(texts) < min_langs:
        raise ValueError(f"{field}: need a dict with >= {min_langs} languages, got {texts!r}")
    for lang, text in texts.items():
        if not isinstance(lang, str) or not isinstance(text, str) or not lang or not text.strip():
            raise ValueError(f"{field}: language and text must be non-empty strings, got {lang!r}: {text!r}")
    return texts


def encode_ds(
    key: str,
    roi: np.ndarray,
    boxes: np.ndarray,
    captions: dict[str, str],
    jpg: bytes | None = None,
    num_rois: int = NUM_ROIS,
) -> dict[str, Any]:
    """Fields of one Ds sample; `roi`/`boxes` must already be padded/truncated to 36 rows."""
    roi = np.asarray(roi)
    boxes = np.asarray(boxes)
    if roi.shape != (NUM_ROIS, FEATURE_DIM):
        raise ValueError(f"roi must be [{NUM_ROIS},{FEATURE_DIM}], got {list(roi.shape)}")
    if boxes.shape != (NUM_ROIS, BOX_DIM):
        raise ValueError(f"boxes must be [{NUM_ROIS},{BOX_DIM}], got {list(boxes.shape)}")
    if not 1 <= num_rois <= NUM_ROIS:
        raise ValueError(f"num_rois must be in 1..{NUM_ROIS}, got {num_rois}")
    sample: dict[str, Any] = {
        "__key__": check_key(key),
        "roi.npy": _npy_bytes(roi.astype(np.float16, copy=False)),
        "boxes.npy": _npy_bytes(boxes.astype(np.float32)),
        "captions.json": _json_bytes(_check_texts(captions, "captions", 1)),
    }
    if jpg is not None:
        sample["jpg"] = bytes(jpg)
    if num_rois != NUM_ROIS:
        sample["nroi.txt"] = str(int(num_rois)).encode("ascii")
    return sample


def encode_dw(key: str, jpg: bytes, texts: dict[str, str]) -> dict[str, Any]:
    """Fields of one Dw sample (an image with texts in >= 2 languages)."""
    return {"__key__": check_key(key), "jpg": bytes(jpg), "texts.json": _json_bytes(_check_texts(texts, "texts", 2))}


def encode_dt(key: str, src_lang: str, tgt_lang: str, src: str, tgt: str) -> dict[str, Any]:
    """Fields of one Dt sample (one parallel text pair)."""
    pair = {"src_lang": src_lang, "tgt_lang": tgt_lang, "src": src, "tgt": tgt}
    for name, value in pair.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"pair.{name} must be a non-empty string, got {value!r}")
    if src_lang == tgt_lang:
        raise ValueError(f"a Dt pair needs two different languages, got {src_lang!r} twice")
    return {"__key__": check_key(key), "pair.json": _json_bytes(pair)}


# --------------------------------------------------------------------------------------------
# decoding (raw wds sample dict -> python objects)
# --------------------------------------------------------------------------------------------
def _field(sample: dict[str, Any], name: str) -> bytes:
    value = sample.get(name)
    if value is None:
        raise SampleError(name, "missing", sample.get("__key__"))
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise SampleError(name, f"expected raw bytes, got {type(value).__name__} (decode shards without wds .decode())",
                          sample.get("__key__"))
    return bytes(value)


def decode_npy(sample: dict[str, Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Load a numeric npy field (no pickles), check its shape and that it is finite."""
    try:
        arr = np.load(io.BytesIO(_field(sample, name)), allow_pickle=False)
    except SampleError:
        raise
    except Exception as exc:  # np.load raises ValueError/OSError/EOFError on damaged bytes
        raise SampleError(name, f"not a readable npy array ({exc})", sample.get("__key__")) from exc
    if arr.shape != shape:
        raise SampleError(name, f"shape {list(arr.shape)}, expected {list(shape)}", sample.get("__key__"))
    if arr.dtype.kind != "f":
        raise SampleError(name, f"dtype {arr.dtype}, expected floating point", sample.get("__key__"))
    if not np.isfinite(arr).all():
        raise SampleError(name, "contains NaN or inf", sample.get("__key__"))
    return arr


def decode_json(sample: dict[str, Any], name: str) -> Any:
    try:
        return json.loads(_field(sample, name).decode("utf-8"))
    except SampleError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(name, f"not valid UTF-8 JSON ({exc})", sample.get("__key__")) from exc


def decode_texts(sample: dict[str, Any], name: str, min_langs: int) -> dict[str, str]:
    obj = decode_json(sample, name)
    key = sample.get("__key__")
    if not isinstance(obj, dict):
        raise SampleError(name, f"expected an object {{lang: text}}, got {type(obj).__name__}", key)
    texts = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}
    if len(texts) != len(obj):
        raise SampleError(name, "every value must be a non-empty string", key)
    if len(texts) < min_langs:
        raise SampleError(name, f"{len(texts)} language(s), need >= {min_langs}", key)
    return texts


def decode_image(sample: dict[str, Any], name: str = "jpg") -> Image.Image:
    """Verify then decode an image field to RGB; a truncated or bogus file raises SampleError."""
    data = _field(sample, name)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structural check; the object is unusable afterwards
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError)
        raise SampleError(name, f"not a decodable image ({type(exc).__name__}: {exc})", sample.get("__key__")) from exc


def decode_ds(sample: dict[str, Any], with_image: bool | None = None) -> DsSample:
    """Decode a raw Ds sample. `with_image=None` decodes `jpg` when present, True requires it,
    False ignores it (ROI-only training need not pay for JPEG decoding)."""
    key = str(sample.get("__key__", ""))
    roi = decode_npy(sample, "roi.npy", (NUM_ROIS, FEATURE_DIM)).astype(np.float16, copy=False)
    boxes = decode_npy(sample, "boxes.npy", (NUM_ROIS, BOX_DIM)).astype(np.float32, copy=False)
    captions = decode_texts(sample, "captions.json", 1)
    num_rois = NUM_ROIS
    if sample.get("nroi.txt") is not None:
        text = _field(sample, "nroi.txt").decode("ascii", errors="replace").strip()
        if not text.isdigit() or not 1 <= int(text) <= NUM_ROIS:
            raise SampleError("nroi.txt", f"expected an integer in 1..{NUM_ROIS}, got {text!r}", key)
        num_rois = int(text)
    image = None
    if with_image or (with_image is None and sample.get("jpg") is not None):
        image = decode_image(sample, "jpg")
    return DsSample(key=key, roi=roi, boxes=boxes, captions=captions, num_rois=num_rois, image=image)


def decode_dw(sample: dict[str, Any]) -> DwSample:
    """Decode a raw Dw sample (image + texts in >= 2 languages)."""
    texts = decode_texts(sample, "texts.json", 2)
    return DwSample(key=str(sample.get("__key__", "")), image=decode_image(sample, "jpg"), texts=texts)


def decode_dt(sample: dict[str, Any]) -> DtSample:
    """Decode a raw Dt sample (one parallel pair)."""
    key = str(sample.get("__key__", ""))
    obj = decode_json(sample, "pair.json")
    if not isinstance(obj, dict):
        raise SampleError("pair.json", f"expected an object, got {type(obj).__name__}", key)
    values = {}
    for name in ("src_lang", "tgt_lang", "src", "tgt"):
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            raise SampleError("pair.json", f"{name!r} missing or not a non-empty string", key)
        values[name] = value
    return DtSample(key=key, **values)
