"""Shared fixtures: tiny synthetic datasets in the real layouts, and the real data when present."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    "Skip realdata tests when ../shared/data is absent and gpu tests without CUDA."
    skip_data = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    for item in items:
        if "realdata" in item.keywords and not SHARED_DATA.is_dir(): item.add_marker(skip_data)
        if "gpu" in item.keywords:
            import torch
            if not torch.cuda.is_available(): item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    "Tiny models on a shared 2-core machine run many times faster on one thread than fighting for two."
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def image_cache_in_tmp(tmp_path_factory):
    "Recipes cache decoded images (apps/recipes.RECIPE_CACHE): the tests' go to a temporary folder, not ~/.cache."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_FAST_CACHE", str(tmp_path_factory.mktemp("image_cache")))
        yield


@pytest.fixture
def shared_data():
    return SHARED_DATA


def xray_like(size=64, seed=0, bright_spot=False):
    "A small grayscale array that looks vaguely like an X-ray (two dark lung fields)."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1:size * 1j, 0:1:size * 1j]
    img = 0.6 - 0.4 * ((((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1) | (((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1))
    if bright_spot: img = img + 0.4 * np.exp(-(((xx - 0.3) ** 2 + (yy - 0.6) ** 2) / 0.01))
    img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    return (img * 255).astype(np.uint8)


def save_gray(path, seed=0, size=64, bright_spot=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(xray_like(size, seed, bright_spot), mode="L").save(path)
    return path


def save_16bit_png(path, size=64):
    "A 16-bit grayscale PNG using 12 bits of range, as detectors write them."
    arr = (xray_like(size).astype(np.uint16) * 16)
    Image.fromarray(arr.astype(np.uint16)).save(path)  # PIL writes mode I;16
    return path


def save_rgba_png(path, size=64):
    rgba = np.dstack([xray_like(size)] * 3 + [np.full((size, size), 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # a transparent corner
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path


def save_corrupt_jpeg(path, seed=0):
    "A JPEG cut off half way (a real partial download)."
    save_gray(path.with_suffix(".tmp.jpeg"), seed)
    data = path.with_suffix(".tmp.jpeg").read_bytes()
    path.with_suffix(".tmp.jpeg").unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


CORONAHACK_ROWS = [  # X_ray_image_name, Label, Dataset_type, Label_2_Virus_category, Label_1_Virus_category
    ("IM-0001-0001.jpeg", "Normal", "TRAIN", "", ""), ("IM-0001-0002.jpeg", "Normal", "TRAIN", "", ""),
    ("IM-0002-0001.jpeg", "Normal", "TRAIN", "", ""), ("IM-0003-0001.jpeg", "Normal", "TRAIN", "", ""),
    ("IM-0004-0001.jpeg", "Normal", "TRAIN", "", ""), ("IM-0005-0001.jpeg", "Normal", "TRAIN", "", ""),
    ("person1_bacteria_1.jpeg", "Pnemonia", "TRAIN", "", "bacteria"),
    ("person1_bacteria_2.jpeg", "Pnemonia", "TRAIN", "", "bacteria"),
    ("person2_bacteria_3.jpeg", "Pnemonia", "TRAIN", "", "bacteria"),
    ("person3_virus_4.jpeg", "Pnemonia", "TRAIN", "", "Virus"), ("person4_virus_5.jpeg", "Pnemonia", "TRAIN", "", "Virus"),
    ("person5_virus_6.jpeg", "Pnemonia", "TRAIN", "", "Virus"), ("person6_bacteria_7.jpeg", "Pnemonia", "TRAIN", "", "bacteria"),
    ("covid-a.png", "Pnemonia", "TRAIN", "COVID-19", "Virus"), ("covid-b.png", "Pnemonia", "TRAIN", "COVID-19", "Virus"),
    ("covid-c.jpeg", "Pnemonia", "TRAIN", "COVID-19", "Virus"), ("covid-d.jpeg", "Pnemonia", "TRAIN", "COVID-19", "Virus"),
    ("covid-missing.jpeg", "Pnemonia", "TRAIN", "COVID-19", "Virus"),  # not on disk
    ("ards-1.jpeg", "Pnemonia", "TRAIN", "ARDS", "Stress-Smoking"),
    ("IM-0101-0001.jpeg", "Normal", "TEST", "", ""), ("IM-0102-0001.jpeg", "Normal", "TEST", "", ""),
    ("person1_virus_9.jpeg", "Pnemonia", "TEST", "", "Virus"),  # person1 of TEST is not person1 of TRAIN
    ("person7_bacteria_10.jpeg", "Pnemonia", "TEST", "", "bacteria"),
    ("corrupt.jpeg", "Pnemonia", "TEST", "", "bacteria"),  # half a JPEG
]


@pytest.fixture
def coronahack_root(tmp_path):
    "A tiny CoronaHack in its Kaggle layout: a missing file, a corrupt JPEG, a 16-bit PNG, an RGBA PNG."
    import pandas as pd
    root = tmp_path / "coronahack"
    images = root / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset"
    for i, (name, label, dtype, l2, l1) in enumerate(CORONAHACK_ROWS):
        path = images / dtype.lower() / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "covid-missing.jpeg": continue
        if name == "corrupt.jpeg": save_corrupt_jpeg(path, i)
        elif name == "covid-a.png": save_16bit_png(path)
        elif name == "covid-b.png": save_rgba_png(path)
        else: save_gray(path, i, bright_spot=label != "Normal")
    meta = pd.DataFrame(CORONAHACK_ROWS, columns=["X_ray_image_name", "Label", "Dataset_type",
                                                   "Label_2_Virus_category", "Label_1_Virus_category"])
    meta.to_csv(root / "Chest_xray_Corona_Metadata.csv")  # with the unnamed index column, as on Kaggle
    return root


@pytest.fixture
def folders_root(tmp_path):
    "DarkCovidNet-like class folders with NIH-style names (several images per patient)."
    root = tmp_path / "dark"
    for c, cls in enumerate(["Covid-19", "No_findings", "Pneumonia"]):
        for p in range(6):
            for k in range(2):
                name = f"{c}{p:07d}_{k:03d}.png" if cls != "Covid-19" else f"covid-paper-{p}-{k}.jpeg"
                save_gray(root / cls / name, seed=100 * c + 10 * p + k, bright_spot=cls != "No_findings")
    (root / "Pneumonia" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def split_folders_root(tmp_path):
    "The university-course layout: train/valid/test folders, each with Infected/ and Normal/."
    root = tmp_path / "course"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for cls in ("Infected", "Normal"):
            for i in range(n):
                save_gray(root / split / cls / f"{split}-{cls}-{i}.jpeg", seed=len(split) * 100 + i + (50 if cls == "Infected" else 0),
                          bright_spot=cls == "Infected")
    return root
