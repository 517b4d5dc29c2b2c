"""`open_feature_store(path)`: the read-only ROI feature store at a path, whichever released layout it
has (IGLUE H5, volta LMDB: rc3.data.features; UNITER / UC2 img_db: rc3.data.features_imgdb)."""
from __future__ import annotations

import os
from pathlib import Path

from rc3.data.features import FeatureStore, H5FeatureStore, LmdbFeatureStore
from rc3.data.features_imgdb import ImgDbFeatureStore, find_img_db

__all__ = ["open_feature_store"]


def _is_lmdb_dir(path: Path) -> bool:
    return path.is_dir() and (path / "data.mdb").is_file()


def open_feature_store(path: str | os.PathLike[str]) -> FeatureStore:
    """Open an IGLUE H5 file, a volta LMDB store (directory with data.mdb, or the .mdb file) or a
    UNITER / UC2 img_db folder (rc3.data.features_imgdb)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"feature store {p} does not exist; pass an IGLUE .h5 file or a volta LMDB directory")
    if find_img_db(p) is not None:
        return ImgDbFeatureStore(p)
    if _is_lmdb_dir(p):
        return LmdbFeatureStore(p)
    if p.is_file():
        import h5py

        if h5py.is_hdf5(p):
            return H5FeatureStore(p)
        if p.suffix == ".mdb":
            return LmdbFeatureStore(p)
    raise ValueError(
        f"unknown feature store format at {p}: expected an HDF5 file (IGLUE release), an LMDB "
        "directory containing data.mdb (volta h5_to_lmdb / npy_to_lmdb) or a UNITER / UC2 img_db folder "
        "(feat_th0.2_max100_min10[_compressed]/ + nbb_th0.2_max100_min10.json)"
    )
