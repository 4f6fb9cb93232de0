"""Packaging for vkd_torchreid: Views Knowledge Distillation as a torchreid plugin."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vkd_torchreid",
    version="0.1.0",
    description="Views Knowledge Distillation (VKD, ECCV 2020) for the torchreid re-ID toolbox",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vkd_torchreid", "vkd_torchreid.*"]),
    python_requires=">=3.9",
    # Ranges, never pins: installing next to an existing torchreid project must not
    # replace the user's torch. Our CI pins torch/torchvision in .ci/constraints.txt.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "torchreid>=0.2.5",
        "yacs>=0.1.8",
        "opencv-python>=4.5",
        "Pillow>=9.1",
        "gdown>=4.0",  # torchreid imports it at start-up but does not declare it
        "scipy>=1.7",
        "tensorboard>=2.10",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "numpy>=1.21",
    ],
    extras_require={"test": ["pytest>=7", "ruff>=0.4"]},
    license="MIT",
)
