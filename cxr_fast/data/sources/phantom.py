"""Synthetic chest-X-ray-like phantoms: the built-in default dataset (no download needed).

SYNTHETIC: lung fields, ribs, clavicles, heart and class-specific opacities drawn with numpy.
Normal: clear lungs. Pneumonia: one dense lobar consolidation in one lung. COVID-19: several faint,
bilateral, peripheral, lower-zone ground-glass patches. Several images per patient (same anatomy,
small changes), so patient-level splitting matters here as it does on real data.
"""
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ...core.errors import DataError

CSV_NAME = "phantom.csv"
GENERATES_DATA = True  # an absent ROOT is created and filled
FINDINGS = ["Normal", "Pneumonia", "COVID-19"]
TASKS = {
    "3class": "Normal / Pneumonia / COVID-19 phantoms",
    "binary": "Normal vs Pneumonia (COVID-19 phantoms count as Pneumonia)",
    "multilabel": "0/1 targets COVID-19, Pneumonia, Normal (a COVID-19 phantom is also Pneumonia)",
}
CLASSES = {"3class": FINDINGS, "binary": ["Normal", "Pneumonia"], "multilabel": ["COVID-19", "Pneumonia", "Normal"]}


def _gaussian(yy, xx, cy, cx, sy, sx):
    return np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)


def _anatomy(rng):
    "Per-patient anatomy parameters (fractions of the image size)."
    return {"lung_dx": rng.uniform(0.19, 0.23), "lung_rx": rng.uniform(0.13, 0.16), "lung_ry": rng.uniform(0.27, 0.32),
            "cy": rng.uniform(0.50, 0.55), "body_rx": rng.uniform(0.40, 0.46), "rib_gap": rng.uniform(0.075, 0.09),
            "heart": rng.uniform(0.10, 0.13), "tissue": rng.uniform(0.45, 0.6)}


def draw_phantom(finding, anatomy, size, rng):
    "One phantom image (uint8, size x size) for `finding` with the patient's `anatomy`."
    a = {k: v * (1 + rng.normal(0, 0.02)) for k, v in anatomy.items()}  # small change between a patient's images
    yy, xx = np.mgrid[0:1:size * 1j, 0:1:size * 1j]
    img = np.full((size, size), 0.05)
    body = ((xx - 0.5) / a["body_rx"]) ** 2 + ((yy - 0.55) / 0.55) ** 2 < 1
    img[body] = a["tissue"]
    lungs = np.zeros_like(img, dtype=bool)
    for side in (-1, 1):
        cx = 0.5 + side * a["lung_dx"]
        lung = ((xx - cx) / a["lung_rx"]) ** 2 + ((yy - a["cy"]) / a["lung_ry"]) ** 2 < 1
        lungs |= lung
        img[lung] = 0.18
        for i in range(9):  # ribs: arcs curving down away from the spine
            y_rib = a["cy"] - a["lung_ry"] + 0.02 + i * a["rib_gap"] + 0.9 * (xx - 0.5) ** 2
            img[lung & (np.abs(yy - y_rib) < 0.012)] += 0.12
        clavicle = np.abs(yy - (0.2 + 0.25 * np.abs(xx - 0.5))) < 0.012
        img[clavicle & (np.abs(xx - 0.5) < 0.3) & (side * (xx - 0.5) > 0.03)] = 0.75
    img += 0.55 * _gaussian(yy, xx, a["cy"] + 0.12, 0.46, a["heart"], a["heart"] * 1.2) * body
    img[(np.abs(xx - 0.5) < 0.03) & body] = np.maximum(img[(np.abs(xx - 0.5) < 0.03) & body], 0.7)  # spine
    img += opacity(finding, a, yy, xx, rng) * lungs
    img += rng.normal(0, 0.03, img.shape)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    return (img * 255).astype(np.uint8)


def opacity(finding, a, yy, xx, rng):
    "The class-specific pattern: none, one dense consolidation, or bilateral peripheral patches."
    out = np.zeros_like(yy)
    if finding == "Pneumonia":
        side = rng.choice([-1, 1])
        cx = 0.5 + side * a["lung_dx"] + rng.uniform(-0.04, 0.04)
        cy = a["cy"] + rng.uniform(-0.05, 0.18)
        out += rng.uniform(0.40, 0.55) * _gaussian(yy, xx, cy, cx, rng.uniform(0.06, 0.09), rng.uniform(0.05, 0.08))
    elif finding == "COVID-19":
        for side in (-1, 1):
            for _ in range(rng.integers(2, 4)):
                cx = 0.5 + side * (a["lung_dx"] + a["lung_rx"] * rng.uniform(0.35, 0.75))
                cy = a["cy"] + a["lung_ry"] * rng.uniform(0.0, 0.7)
                out += rng.uniform(0.16, 0.26) * _gaussian(yy, xx, cy, cx, rng.uniform(0.035, 0.06), rng.uniform(0.03, 0.05))
    return out


def make_phantoms(root, patients_per_class=40, images_per_patient=(1, 3), size=128, seed=0):
    "Write phantom PNGs and phantom.csv (file, patient_id, finding) under `root`; returns the CSV path."
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for finding in FINDINGS:
        for p in range(patients_per_class):
            pid = f"{finding.lower().replace('-', '')}{p:04d}"
            anatomy = _anatomy(rng)
            for k in range(rng.integers(images_per_patient[0], images_per_patient[1] + 1)):
                name = f"{pid}_{k}.png"
                Image.fromarray(draw_phantom(finding, anatomy, size, rng), mode="L").save(root / name)
                rows.append({"file": name, "patient_id": pid, "finding": finding})
    csv_path = root / CSV_NAME
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


def load(root, task, seed=42, patients_per_class=40, image_size=128):
    "Rows for `task`; an empty or missing ROOT gets a fresh phantom set first (seeded)."
    root = Path(root)
    csv_path = root / CSV_NAME
    if not csv_path.is_file():
        if root.exists() and any(root.iterdir()):
            raise DataError(f"{root} holds files but no {CSV_NAME}; give an empty folder to generate phantoms into")
        make_phantoms(root, patients_per_class=patients_per_class, size=image_size, seed=seed)
    meta = pd.read_csv(csv_path, dtype=str)
    df = pd.DataFrame({"path": [str((root / f).resolve()) for f in meta["file"]], "patient_id": meta["patient_id"],
                       "orig_label": meta["finding"], "source": "phantom"})
    if task == "multilabel":
        df["COVID-19"] = (meta["finding"] == "COVID-19").astype(int)
        df["Pneumonia"] = meta["finding"].isin(["Pneumonia", "COVID-19"]).astype(int)
        df["Normal"] = (meta["finding"] == "Normal").astype(int)
    elif task == "binary":
        df["label"] = meta["finding"].replace({"COVID-19": "Pneumonia"})
    else:
        df["label"] = meta["finding"]
    return df, [], CLASSES[task]
