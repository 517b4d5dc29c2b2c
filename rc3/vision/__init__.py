"""Visual feature extraction for a user's own images (ROI features in the IGLUE H5 layout).

`rc3.vision.butd` is the bottom-up-attention detector of IGLUE's features (the default of
tools/extract_roi_features.py); `rc3.vision.roi_extractor` is the torchvision COCO detector kept as
``--detector torchvision-coco`` (not IGLUE-compatible); `image_sources` and `sharded_extract` feed
and run either of them over many images.
"""
from rc3.vision.roi_extractor import (
    ExtractionStats,
    RegionFeatures,
    RoIExtractor,
    build_detector,
    extract_to_h5,
    find_images,
    image_key,
    load_state_dict_file,
)

__all__ = [
    "ExtractionStats",
    "RegionFeatures",
    "RoIExtractor",
    "build_detector",
    "extract_to_h5",
    "find_images",
    "image_key",
    "load_state_dict_file",
]
