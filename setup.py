"""Install RC3: `pip install -e .[cpu,dev]` (faiss-cpu, test tools) or `.[gpu]` (faiss-gpu)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="rc3",
    version="0.1.0",
    description="RC3: Regularized Contrastive Cross-lingual Cross-modal pretraining",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rc3", "rc3.*"]),
    install_requires=[
        "torch>=2.3",
        "torchvision>=0.18",
        "deepspeed>=0.14",
        "transformers>=4.46",
        "webdataset>=0.2.86",
        "accelerate>=0.34",
        "timm>=1.0",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "sacrebleu>=2.4",
        "tensorboard>=2.16",
        "tqdm>=4.66",
        "pyyaml>=6.0",
        "numpy>=1.26",
        "h5py>=3.10",
        "lmdb>=1.4",
        "msgpack>=1.0",  # UNITER / UC2 img_db feature stores (rc3.data.features_imgdb)
        "fsspec>=2023.1",  # data.shard_commands "SCHEME=fsspec" (s3fs / gcsfs add the object stores)
        "pillow>=10.0",
        "protobuf>=4.0",
        "matplotlib>=3.7",  # run curves (tools/plot_run.py) and per-language result charts
    ],
    entry_points={"console_scripts": ["rc3=rc3.cli:main"]},  # rc3 embed|index|search|classify|translate
    extras_require={
        "cpu": ["faiss-cpu>=1.8"],
        "gpu": ["faiss-gpu>=1.7"],
        "dev": ["pytest>=8.0", "pytest-timeout>=2.3", "pyarrow>=14", "msgpack-numpy>=0.4.8"],  # msgpack-numpy writes img_db fixtures
        "extract": ["pyarrow>=14"],  # img2dataset parquet input of tools/extract_roi_features.py
        "adapters": ["peft>=0.10"],  # LoRA adapters of tools/add_language.py --trainable lora
    },
)
