"""UNITER / UC2 `img_db` feature stores (the layout of UC2's released CC3M region features).

An img_db folder (one per split, e.g. `img_db/cc/`) holds, as written by UNITER's
`scripts/convert_imgdir.py` and read by its `data/data.py:DetectFeatLmdb`:

  feat_th{conf_th}_max{max_bb}_min{min_bb}[_compressed]/   LMDB (data.mdb), one entry per image
  nbb_th{conf_th}_max{max_bb}_min{min_bb}.json           {npz file name: number of boxes}
  (or feat_numbb{N}[_compressed]/ with a fixed count, or all[_compressed]/ with no nbb file)

Keys are the extractor's npz file names (`<image id>.npz`); `__keys__` holds their JSON list.
A value holds `features` [n, 2048] (float16), `norm_bb` [n, 6] = (x1/w, y1/h, x2/w, y2/h, w/W,
h/H), `conf` [n] and `soft_labels` [n, 1601], already cut to the image's box count. Uncompressed
stores encode the dict with msgpack-numpy; `_compressed` ones store `np.savez_compressed` bytes.

Reading, like DetectFeatLmdb: the box count comes from the nbb file (from `conf` when there is
none: max(min_bb, #conf > conf_th) capped at max_bb), features are cut to it and widened to
float32, and the 5-d boxes are (x1, y1, x2, y2, w * h), the area UNITER appends as its 7th column
(the location encoding of the H5 / volta readers, rc3.data.features).

Nothing is unpickled. msgpack-numpy's own decoder calls pickle.loads on object arrays, so the
msgpack values are decoded here by hand (numeric dtypes only); the npz values are read with
np.load(allow_pickle=False).
"""
from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rc3.data.features import FEATURE_DIM, FeatureStore, acquire_lmdb, release_lmdb

_DB_NAME = re.compile(r"^(feat_th(?P<th>[0-9.]+)_max(?P<max>\d+)_min(?P<min>\d+)|feat_numbb(?P<num>\d+)|all)"
                      r"(?P<compressed>_compressed)?$")
KEYS_ENTRY = b"__keys__"


def find_img_db(path: Path) -> Path | None:
    """The LMDB folder of an img_db: `path` itself when it is one, else the one inside `path`
    (the compressed variant first, as DetectFeatLmdb's default `compress=True`)."""
    path = Path(path)
    if _DB_NAME.match(path.name) and (path / "data.mdb").is_file():
        return path
    if not path.is_dir():
        return None
    found = sorted((p for p in path.iterdir() if _DB_NAME.match(p.name) and (p / "data.mdb").is_file()),
                   key=lambda p: (not p.name.endswith("_compressed"), not p.name.startswith("feat_th"), p.name))
    return found[0] if found else None


def compute_num_bb(conf: np.ndarray, conf_th: float, min_bb: int, max_bb: int) -> int:
    """UNITER's box count: at least min_bb, the boxes above conf_th, at most max_bb."""
    return int(min(max_bb, max(min_bb, int((np.asarray(conf) > conf_th).sum()))))


def _msgpack_array(obj: Mapping[bytes, Any], what: str) -> np.ndarray:
    """One msgpack-numpy array ({b'nd', b'type', b'kind', b'shape', b'data'}), numeric only."""
    kind = obj.get(b"kind", b"")
    descr = obj.get(b"type")
    if kind in (b"O", b"V") or not isinstance(descr, (str, bytes)):
        raise ValueError(f"{what}: a {'object' if kind == b'O' else 'structured'} array; only numeric arrays are "
                         "read (object arrays would need unpickling)")
    dtype = np.dtype(descr.decode("ascii") if isinstance(descr, bytes) else descr)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"{what}: dtype {dtype} is not numeric")
    data = obj.get(b"data")
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"{what}: array data missing")
    if obj.get(b"nd") is True:
        shape = tuple(int(s) for s in obj.get(b"shape", ()))
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    return np.frombuffer(data, dtype=dtype)[0]  # a numpy scalar


def decode_msgpack_dump(raw: bytes, what: str) -> dict[str, Any]:
    """A msgpack-numpy dict of arrays, decoded without msgpack_numpy (which would unpickle)."""
    import msgpack

    def hook(obj: dict) -> Any:
        if b"nd" in obj:
            return _msgpack_array(obj, what)
        return obj

    try:
        dump = msgpack.unpackb(raw, raw=False, object_hook=hook, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"{what}: not a msgpack-numpy value ({exc})") from exc
    if not isinstance(dump, dict):
        raise ValueError(f"{what}: expected a dict of arrays, got {type(dump).__name__}")
    return {k.decode("utf-8") if isinstance(k, bytes) else str(k): v for k, v in dump.items()}


class NpzFields(Mapping[str, np.ndarray]):
    """The arrays of `savez_compressed` bytes, read on demand with allow_pickle=False."""

    def __init__(self, raw: bytes, what: str) -> None:
        try:
            self.npz = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{what}: not an npz archive ({exc})") from exc
        if not hasattr(self.npz, "files"):
            raise ValueError(f"{what}: a single array, not an npz archive")
        self.what = what

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.npz.files:
            raise KeyError(name)
        try:
            return self.npz[name]
        except ValueError as exc:  # object arrays refuse to load without pickle
            raise ValueError(f"{self.what}: array {name!r} cannot be read without unpickling ({exc})") from exc

    def __iter__(self):
        return iter(self.npz.files)

    def __len__(self) -> int:
        return len(self.npz.files)


class ImgDbFeatureStore(FeatureStore):
    """UNITER / UC2 img_db (see the module docstring); keys are image ids (npz names with or
    without `.npz`)."""

    kind = "UNITER img_db"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        db = find_img_db(self.path)
        if db is None:
            raise ValueError(f"{self.path} holds no UNITER img_db LMDB (feat_th*_max*_min*[_compressed]/, "
                             "feat_numbb*/ or all[_compressed]/ with a data.mdb)")
        self.db = db
        m = _DB_NAME.match(db.name)
        assert m is not None
        self.compressed = bool(m.group("compressed"))
        self.fixed_nbb = int(m.group("num")) if m.group("num") else None
        # UNITER's defaults for the `all` store, which has no nbb file.
        self.conf_th, self.max_bb, self.min_bb = 0.2, 100, 10
        self.name2nbb: dict[str, int] | None = None
        if m.group("th"):
            self.conf_th, self.max_bb, self.min_bb = float(m.group("th")), int(m.group("max")), int(m.group("min"))
            nbb_file = db.parent / f"nbb_th{m.group('th')}_max{m.group('max')}_min{m.group('min')}.json"
            if nbb_file.is_file():
                try:
                    self.name2nbb = {str(k): int(v) for k, v in json.loads(nbb_file.read_text()).items()}
                except (ValueError, AttributeError, TypeError) as exc:
                    raise ValueError(f"{nbb_file}: not a JSON object of box counts ({exc})") from exc

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def _open(self) -> Any:
        return acquire_lmdb(self.db)

    def _close_handle(self, handle: Any) -> None:
        release_lmdb(self.db)

    def _get_raw(self, key: bytes) -> bytes | None:
        with self._get_handle().begin(write=False, buffers=False) as txn:
            return txn.get(key)

    def _name(self, key: str) -> str:
        return key if key.endswith(".npz") else key + ".npz"

    def keys_list(self) -> list[str]:
        if self._keys is None:
            if self.name2nbb is not None:
                names = list(self.name2nbb)
            else:
                raw = self._get_raw(KEYS_ENTRY)
                if raw is not None:
                    names = [str(n) for n in json.loads(raw.decode("utf-8"))]
                else:
                    with self._get_handle().begin(write=False) as txn:
                        names = [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)
                                 if k != KEYS_ENTRY]
            self._keys = [n[: -len(".npz")] if n.endswith(".npz") else n for n in names]
        return self._keys

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._get_raw(self._name(key).encode("utf-8")) is not None

    def __getitem__(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        name = self._name(key) if isinstance(key, str) else ""
        raw = self._get_raw(name.encode("utf-8")) if name else None
        if raw is None:
            raise self._missing(str(key))
        what = f"image {name!r} in {self.db}"
        dump: Mapping[str, Any] = NpzFields(raw, what) if self.compressed else decode_msgpack_dump(raw, what)
        for field in ("features", "norm_bb"):
            if field not in dump:
                raise ValueError(f"{what}: field {field!r} missing")
        feats = np.asarray(dump["features"])
        norm_bb = np.asarray(dump["norm_bb"])
        if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
            raise ValueError(f"{what}: features of shape {feats.shape}, expected [n, {FEATURE_DIM}]")
        if norm_bb.ndim != 2 or norm_bb.shape[1] != 6 or norm_bb.shape[0] != feats.shape[0]:
            raise ValueError(f"{what}: norm_bb of shape {norm_bb.shape}, expected [{feats.shape[0]}, 6]")
        nbb = self._num_bb(name, dump, what)
        bb = norm_bb[:nbb].astype(np.float32)
        boxes = np.concatenate([bb[:, :4], bb[:, 4:5] * bb[:, 5:6]], axis=1)  # UNITER's area column
        return feats[:nbb].astype(np.float32), boxes

    def _num_bb(self, name: str, dump: Mapping[str, Any], what: str) -> int:
        if self.fixed_nbb is not None:
            return self.fixed_nbb
        if self.name2nbb is not None:
            if name not in self.name2nbb:
                raise ValueError(f"{what}: no box count in the nbb file")
            return self.name2nbb[name]
        if "conf" not in dump:
            raise ValueError(f"{what}: no nbb file and no 'conf' field to count the boxes from")
        return compute_num_bb(np.asarray(dump["conf"]), self.conf_th, self.min_bb, self.max_bb)
