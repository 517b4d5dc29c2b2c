"""Visual feature extraction for a user's own images (ROI features in the IGLUE H5 layout)."""
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
