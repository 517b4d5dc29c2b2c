"""Read-only access to pre-extracted ROI feature stores (IGLUE H5, volta LMDB, UNITER img_db).

`open_feature_store(path)` (rc3.data.features_open, which picks the layout) returns a `FeatureStore`: a read-only mapping from an image key (str)
to `(features, boxes)` with features [n, 2048] float32 and boxes [n, 5] float32 =
(x1/w, y1/h, x2/w, y2/h, relative area), the location encoding volta uses for IGLUE.

Three released layouts are understood:
- IGLUE H5: one group per image id with datasets `features` [n,2048], `boxes` [n,4] in absolute
  pixels, `img_w`, `img_h` (and `obj_id`, `obj_conf`, `attr_id`, `attr_conf`, unused here).
- volta LMDB (`h5_to_lmdb.py`): key `img_id.encode()`, value a pickled dict of the H5 fields as raw
  numpy arrays; the special key `b"keys"` holds the pickled list of ids.
- volta LMDB (`npy_to_lmdb.py`): same container, but `features` / `boxes` are base64-encoded float32
  bytes, plus `num_boxes`, `objects`, `cls_prob`.
- UNITER / UC2 img_db (UC2's CC3M features): see rc3.data.features_imgdb.
Like volta's reader, base64 is tried first and raw arrays are the fallback; the box count is taken
from the feature array (a stored `num_boxes` is ignored).

Security: the LMDB values are pickles because that is how the stores are released; reading them
means unpickling. They are decoded with `_RestrictedUnpickler`, which resolves only the globals
numpy needs to rebuild arrays, dtypes and scalars (plus `_codecs.encode`, used by protocol-2
pickles for bytes). Any other global (os.system, eval, arbitrary classes) raises
`pickle.UnpicklingError`, so a crafted store cannot execute code. Plain `pickle.loads` is never used.

Handles (h5py file, lmdb environment) are opened lazily on first access and re-opened after a fork
(the pid is checked), and the store pickles as just its path, so one store object can be handed
to DataLoader workers whether they fork or spawn.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_DIM = 2048

# (module, name) pairs a feature pickle may reference. numpy 1.x pickles name `numpy.core.*`,
# numpy 2.x `numpy._core.*`; protocol 5 uses `_frombuffer`, protocol 2 `_codecs.encode` for bytes.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays/scalars and plain builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"feature store pickle references {module}.{name}, which is not a numpy array/scalar "
                "building block; refusing to load it"
            )
        # Old stores name numpy.core.*; numpy 2 keeps that only as a deprecated alias.
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def restricted_loads(data: bytes) -> Any:
    """Unpickle `data` allowing only numpy array/scalar reconstruction and builtin containers."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def normalise_boxes(boxes: np.ndarray, img_w: float, img_h: float) -> np.ndarray:
    """Absolute (x1, y1, x2, y2) [n,4] -> [n,5] float32 (x1/w, y1/h, x2/w, y2/h, area/(w*h))."""
    w, h = float(img_w), float(img_h)
    if not (w > 0 and h > 0):
        raise ValueError(f"image size must be positive, got img_w={img_w}, img_h={img_h}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty((b.shape[0], 5), dtype=np.float64)
    out[:, 0] = b[:, 0] / w
    out[:, 1] = b[:, 1] / h
    out[:, 2] = b[:, 2] / w
    out[:, 3] = b[:, 3] / h
    out[:, 4] = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0]) / (w * h)
    return out.astype(np.float32)


def _as_float_matrix(value: Any, cols: int, what: str) -> np.ndarray:
    """volta's rule: base64-encoded float32 bytes first, a raw numpy array as the fallback."""
    if isinstance(value, (bytes, bytearray, str)):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{what} is neither base64 float32 bytes nor an array ({exc})") from exc
        if len(raw) % (4 * cols):
            raise ValueError(f"{what}: {len(raw)} decoded bytes is not a multiple of {cols} float32")
        return np.frombuffer(raw, dtype=np.float32).reshape(-1, cols)
    arr = np.asarray(value)
    if arr.size % cols:
        raise ValueError(f"{what}: array of shape {arr.shape} cannot be reshaped to [-1, {cols}]")
    return arr.reshape(-1, cols).astype(np.float32, copy=False)


def _first(value: Any) -> float:
    """A stored size may be a python int, a numpy scalar or a 0-d / 1-element array."""
    return float(np.asarray(value).reshape(-1)[0])


def _scalar(item: Mapping[str, Any], names: tuple[str, ...], what: str) -> float:
    for name in names:
        if name in item and item[name] is not None:
            return _first(item[name])
    raise ValueError(f"{what}: none of the fields {names} present")


def _assemble(raw_feats: Any, raw_boxes: Any, img_w: float, img_h: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    feats = _as_float_matrix(raw_feats, FEATURE_DIM, f"{what} features")
    boxes = _as_float_matrix(raw_boxes, 4, f"{what} boxes")
    if boxes.shape[0] != feats.shape[0]:
        raise ValueError(f"{what}: {feats.shape[0]} feature rows but {boxes.shape[0]} boxes")
    # every store decodes a fresh array per read, so a copy is only needed to make it writable and
    # contiguous (np.frombuffer over base64 bytes); copying 300 KB per image was ~5% of a Ds build
    if not (feats.flags.writeable and feats.flags.c_contiguous):
        feats = np.array(feats, dtype=np.float32)
    return feats, normalise_boxes(boxes, img_w, img_h)


class FeatureStore(Mapping[str, tuple[np.ndarray, np.ndarray]]):
    """Read-only mapping image key -> (features [n,2048] f32, boxes [n,5] f32); lazily opened."""

    kind = "abstract"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._pid: int | None = None
        self._keys: list[str] | None = None

    # --- handle management -------------------------------------------------------------------
    def _open(self) -> Any:
        raise NotImplementedError

    def _close_handle(self, handle: Any) -> None:
        handle.close()

    def _get_handle(self) -> Any:
        # A handle inherited through fork is not safe to use (h5py / lmdb state is per process):
        # drop it without closing (closing could disturb the parent) and open a fresh one.
        if self._handle is None or self._pid != os.getpid():
            self._handle = self._open()
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close the underlying file; the store re-opens on the next access."""
        if self._handle is not None and self._pid == os.getpid():
            self._close_handle(self._handle)
        self._handle = None
        self._pid = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["path"])  # as unpickled: a fresh store of the same class

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    # --- mapping ------------------------------------------------------------------------------
    def _missing(self, key: str) -> KeyError:
        return KeyError(f"image key {key!r} not found in {self.kind} feature store {self.path}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list())

    def __len__(self) -> int:
        return len(self.keys_list())

    def keys_list(self) -> list[str]:
        """All image keys as strings, in store order."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class H5FeatureStore(FeatureStore):
    """IGLUE H5 release: one group per image id."""

    kind = "H5"

    def _open(self) -> Any:
        import h5py

        return h5py.File(self.path, "r")

    def keys_list(self) -> list[str]:
        if self._keys is None:
            self._keys = list(self._get_handle().keys())
        return self._keys

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and "/" not in key and key in self._get_handle()

    def __getitem__(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(key, str) or "/" in key or key not in self._get_handle():
            raise self._missing(str(key))
        group = self._get_handle()[key]
        what = f"image {key!r} in {self.path}"
        for name in ("features", "boxes", "img_w", "img_h"):
            if name.encode() not in group.id:  # the low-level test: a Ds build does it 4x an image
                raise ValueError(f"{what}: dataset {name!r} missing from the H5 group")
        return _assemble(
            _h5_read(group, "features"),
            _h5_read(group, "boxes"),
            _first(_h5_read(group, "img_w")),
            _first(_h5_read(group, "img_h")),
            what,
        )


def _h5_read(group: Any, name: str) -> Any:
    """`group[name][()]`, through h5py's low-level API for a plain numeric dataset.

    h5py's high-level Dataset costs far more per read than the read itself for arrays this
    small (its object, shape, dtype and selection set-up), and a Ds build reads four datasets
    per image. The low-level read returns the same values in the same dtype; anything else (a
    string, compound or empty dataset, a group) takes the high-level path as before."""
    from h5py import h5d, h5s

    try:
        dsid = h5d.open(group.id, name.encode("utf-8"))
    except (KeyError, ValueError, TypeError):
        return group[name][()]
    dtype, space = dsid.dtype, dsid.get_space()
    kind = space.get_simple_extent_type()
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None or kind not in (
            h5s.SIMPLE, h5s.SCALAR) or 0 in dsid.shape:
        return group[name][()]
    out = np.empty(dsid.shape, dtype=dtype)
    dsid.read(h5s.ALL, h5s.ALL, out)
    return out[()] if out.ndim == 0 else out


# py-lmdb refuses to open one environment twice in a process, yet two stores may share a path
# (a copy handed to a worker, two readers of one split): share the env per (path, pid), refcounted.
_LMDB_ENVS: dict[tuple[str, int], list[Any]] = {}


def acquire_lmdb(path: Path) -> Any:
    import lmdb

    key = (str(path.resolve()), os.getpid())
    entry = _LMDB_ENVS.get(key)
    if entry is None:
        # After a fork the parent's env is still registered with py-lmdb in this (child) process and
        # blocks a fresh open. Closing the child's copy only unmaps/closes the child's descriptors
        # (the store is read-only and lock-free, so no shared lock state is touched), then reopen.
        for stale in [k for k in _LMDB_ENVS if k[0] == key[0]]:
            _LMDB_ENVS.pop(stale)[0].close()
        env = lmdb.open(
            str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1024
        )
        entry = _LMDB_ENVS[key] = [env, 0]
    entry[1] += 1
    return entry[0]


def release_lmdb(path: Path) -> None:
    key = (str(path.resolve()), os.getpid())
    entry = _LMDB_ENVS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        entry[0].close()
        del _LMDB_ENVS[key]


class LmdbFeatureStore(FeatureStore):
    """volta LMDB directory (pickled raw arrays or the base64 `npy_to_lmdb` variant)."""

    kind = "LMDB"

    def _open(self) -> Any:
        return acquire_lmdb(self.path)

    def _close_handle(self, handle: Any) -> None:
        release_lmdb(self.path)

    def _get_raw(self, key: bytes) -> bytes | None:
        with self._get_handle().begin(write=False, buffers=False) as txn:
            return txn.get(key)

    def keys_list(self) -> list[str]:
        if self._keys is None:
            raw = self._get_raw(b"keys")
            if raw is not None:
                ids = restricted_loads(raw)
                self._keys = [k.decode("utf-8") if isinstance(k, (bytes, bytearray)) else str(k) for k in ids]
            else:  # no index entry: list the keys themselves
                with self._get_handle().begin(write=False) as txn:
                    self._keys = [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)]
        return self._keys

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key != "keys" and self._get_raw(key.encode("utf-8")) is not None

    def __getitem__(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        # b"keys" is the id index, never an image.
        raw = self._get_raw(key.encode("utf-8")) if isinstance(key, str) and key != "keys" else None
        if raw is None:
            raise self._missing(str(key))
        what = f"image {key!r} in {self.path}"
        item = restricted_loads(raw)
        if not isinstance(item, dict):
            raise ValueError(f"{what}: expected a pickled dict, got {type(item).__name__}")
        for name in ("features", "boxes"):
            if name not in item:
                raise ValueError(f"{what}: field {name!r} missing")
        img_w = _scalar(item, ("img_w", "image_w", "image_width"), what)
        img_h = _scalar(item, ("img_h", "image_h", "image_height"), what)
        return _assemble(item["features"], item["boxes"], img_w, img_h, what)
