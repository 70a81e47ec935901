"""The `siim` source: study labels, DICOM paths found on disk, multi-image policies, missing files."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_fast.data.dicom import write_dicom
from cxr_fast.core.errors import DataError
from cxr_fast.data.sources import siim
from cxr_fast.data.table import build_table

REAL_SIIM = Path(__file__).parents[2] / "shared" / "data" / "siim"
ONEHOT = {"Negative for Pneumonia": [1, 0, 0, 0], "Typical Appearance": [0, 1, 0, 0],
          "Indeterminate Appearance": [0, 0, 1, 0], "Atypical Appearance": [0, 0, 0, 1]}


def tiny_xray(seed):
    "A 32x32 16-bit image, different for each seed (so no near duplicates)."
    return (np.random.default_rng(seed).random((32, 32)) * 4000).astype(np.uint16)


def write_csvs(root, studies, images):
    "studies: {study: appearance or one-hot list}; images: [(image, study)]."
    rows = [[f"{s}_study", *(a if isinstance(a, list) else ONEHOT[a])] for s, a in studies.items()]
    pd.DataFrame(rows, columns=siim.STUDY_COLUMNS).to_csv(root / siim.STUDY_CSV, index=False)
    pd.DataFrame([[f"{i}_image", "", "none 1 0 0 1 1", s] for i, s in images],
                 columns=siim.IMAGE_COLUMNS).to_csv(root / siim.IMAGE_CSV, index=False)


def write_image(root, study, image, seed, series="ser1", **elements):
    "A DICOM at the competition's path train/<study>/<series>/<image>.dcm."
    return write_dicom(root / "train" / study / series / f"{image}.dcm", tiny_xray(seed), **elements)


def make_root(root, n=12):
    "n single-image studies, alternating Negative / Typical, each its own patient (PatientID P<i>)."
    studies = {f"st{i}": ("Negative for Pneumonia" if i % 2 else "Typical Appearance") for i in range(n)}
    images = [(f"im{i}", f"st{i}") for i in range(n)]
    for i in range(n): write_image(root, f"st{i}", f"im{i}", i, PatientID=f"P{i}", ViewPosition="PA")
    return studies, images


def test_binary_rows_labels_and_patient_ids(tmp_path):
    studies, images = make_root(tmp_path)
    write_csvs(tmp_path, studies, images)
    df, problems, classes = siim.load(tmp_path, "binary")
    assert classes == ["Negative", "Positive"] and problems == []
    assert len(df) == 12 and set(df["source"]) == {"siim"} and "split" not in df.columns
    row = df.set_index("image_id").loc["im3"]
    assert row["label"] == "Negative" and row["patient_id"] == "P3" and row["study_id"] == "st3"
    assert row["path"] == str((tmp_path / "train/st3/ser1/im3.dcm").resolve())
    assert df.set_index("image_id").loc["im2", "label"] == "Positive"


def test_patient_id_falls_back_to_study(tmp_path):
    write_image(tmp_path, "stA", "imA", 1)  # no PatientID in the header
    write_csvs(tmp_path, {"stA": "Atypical Appearance"}, [("imA", "stA")])
    df, _, classes = siim.load(tmp_path, "4class")
    assert classes == list(ONEHOT) and df["patient_id"].tolist() == ["stA"]
    assert df["label"].tolist() == ["Atypical Appearance"]


def multi_image_root(root):
    "Study m has a lateral listed first, then a PA; study u has two images with no ViewPosition."
    studies, images = make_root(root, 4)
    write_image(root, "m", "lat", 100, series="s1", ViewPosition="LL", PatientID="PM")
    write_image(root, "m", "pa", 101, series="s2", ViewPosition="PA", PatientID="PM")
    write_image(root, "u", "u1", 102, PatientID="PU")
    write_image(root, "u", "u2", 103, PatientID="PU")
    studies.update(m="Typical Appearance", u="Negative for Pneumonia")
    write_csvs(root, studies, images + [("lat", "m"), ("pa", "m"), ("u1", "u"), ("u2", "u")])


@pytest.mark.parametrize("policy, kept, detail", [
    ("first-frontal", {"pa", "u1"}, "kept one image each (1 chosen as PA/AP"),
    ("skip", set(), "their 4 images were dropped"),
    ("all", {"lat", "pa", "u1", "u2"}, "kept all 4 images"),
])
def test_multi_image_policies(tmp_path, policy, kept, detail):
    multi_image_root(tmp_path)
    df, problems, _ = siim.load(tmp_path, "binary", multi_image=policy)
    assert set(df["image_id"]) - {f"im{i}" for i in range(4)} == kept
    multi = [p for p in problems if p["kind"] == "multi_image_study"]
    assert len(multi) == 1 and multi[0]["detail"].startswith("2 studies have more than one image")
    assert detail in multi[0]["detail"]


def test_unknown_multi_image_policy(tmp_path):
    with pytest.raises(DataError, match="skip, first-frontal, all"):
        siim.load(tmp_path, "binary", multi_image="frontal")


def test_missing_files_reported_and_summarised(tmp_path):
    studies, images = make_root(tmp_path, 3)
    studies.update({f"gone{i}": "Typical Appearance" for i in range(25)})
    write_csvs(tmp_path, studies, images + [(f"gi{i}", f"gone{i}") for i in range(25)])
    df, problems, _ = siim.load(tmp_path, "binary")
    assert len(df) == 3
    missing = [p for p in problems if p["kind"] == "missing_file"]
    assert len(missing) == 1 + siim.MAX_LISTED and missing[0]["detail"].startswith("25 of the 28 labelled images")
    assert missing[1]["path"].endswith("train/gone0/<series>/gi0.dcm") and "line 5" in missing[1]["detail"]


def test_bad_onehot_row_dropped_as_unknown_label(tmp_path):
    studies, images = make_root(tmp_path, 3)
    studies["st1"] = [1, 1, 0, 0]
    write_csvs(tmp_path, studies, images)
    df, problems, _ = siim.load(tmp_path, "4class")
    assert "im1" not in set(df["image_id"]) and len(df) == 2
    assert [p["kind"] for p in problems] == ["unknown_label"] and "study st1" in problems[0]["detail"]


def test_image_of_unknown_study_and_wrong_folder(tmp_path):
    studies, images = make_root(tmp_path, 2)
    write_csvs(tmp_path, studies, images + [("stray", "nostudy")])
    df, problems, _ = siim.load(tmp_path, "binary")
    assert len(df) == 2 and [p["kind"] for p in problems] == ["unknown_label"]
    assert "image stray's study nostudy is not in train_study_level.csv" in problems[0]["detail"]
    write_csvs(tmp_path, {"other": "Typical Appearance"}, [("elsewhere", "other")])
    with pytest.raises(DataError, match="none of the 1 labelled images in train_image_level.csv is under"):
        siim.load(tmp_path, "binary")


def test_missing_column_names_file_and_column(tmp_path):
    studies, images = make_root(tmp_path, 2)
    write_csvs(tmp_path, studies, images)
    csv = tmp_path / siim.STUDY_CSV
    pd.read_csv(csv).drop(columns=["Atypical Appearance"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['Atypical Appearance'\]") as err:
        siim.load(tmp_path, "binary")
    assert str(csv) in str(err.value)


def test_missing_csv_and_missing_images_are_clear(tmp_path):
    with pytest.raises(DataError, match=f"no {siim.STUDY_CSV} under {tmp_path}"):
        siim.load(tmp_path, "binary")
    write_csvs(tmp_path, {"st0": "Typical Appearance"}, [("im0", "st0")])
    with pytest.raises(DataError, match=f"no SIIM DICOM images found under {tmp_path / 'train'}; download"):
        siim.load(tmp_path, "binary")


def test_balanced_sample(tmp_path):
    studies, images = make_root(tmp_path, 12)
    studies["st11"] = studies["st9"] = "Atypical Appearance"  # 4 Negative, 8 Positive
    write_csvs(tmp_path, studies, images)
    df, _, _ = siim.load(tmp_path, "binary", sample_size=8)
    assert df["label"].value_counts().to_dict() == {"Negative": 4, "Positive": 4}
    again, _, _ = siim.load(tmp_path, "binary", sample_size=8)
    assert again["path"].tolist() == df["path"].tolist()  # seeded
    with pytest.raises(DataError, match="only 4 are available; use at most 8"):
        siim.load(tmp_path, "binary", sample_size=10)


def test_build_table_end_to_end(tmp_path):
    studies, images = make_root(tmp_path, 15)
    write_csvs(tmp_path, studies, images)
    table = build_table("siim", tmp_path, "binary", valid_pct=0.2, multi_image="skip")
    assert len(table) == 15 and set(table["split"]) == {"train", "valid"}
    assert table.attrs["classes"] == ["Negative", "Positive"] and table.attrs["problems"] == []


# --- the real label CSVs, with synthetic DICOMs written at their real paths --------------------

def real_sample(root):
    "Copy the real CSVs to root and write tiny DICOMs for 30 studies (two of them multi-image)."
    for name in (siim.STUDY_CSV, siim.IMAGE_CSV): shutil.copy(REAL_SIIM / name, root / name)
    layout = pd.read_csv(REAL_SIIM / "layout_train_meta.csv", dtype=str)
    counts = layout["studyid"].value_counts()
    multi = sorted(counts[counts == 2].index)[:2]
    single = sorted(counts[counts == 1].index)[:28]
    chosen = layout[layout["studyid"].isin(multi + single)]
    for k, r in enumerate(chosen.itertuples()):
        write_image(root, r.studyid, r.imageid, k, series=r.series_id, PatientID=r.patientid,
                    ViewPosition="PA" if k % 2 else "")
    return chosen


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SIIM.is_dir(), reason="../shared/data/siim not present")
def test_real_csvs_without_images_raise_clear_error():
    with pytest.raises(DataError, match="no SIIM DICOM images found under .*train; download with "
                                        "`python -m cxr_fast download siim`"):
        siim.load(REAL_SIIM, "binary")


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SIIM.is_dir(), reason="../shared/data/siim not present")
def test_real_csvs_with_sample_of_dicoms(tmp_path):
    chosen = real_sample(tmp_path)
    assert len(chosen) == 32
    df, problems, _ = siim.load(tmp_path, "4class", multi_image="all")
    patients = chosen.set_index("imageid").loc[df["image_id"], "patientid"]
    assert len(df) == 32 and df["patient_id"].tolist() == patients.tolist()
    truth = pd.read_csv(REAL_SIIM / siim.STUDY_CSV).set_index("id")
    assert all(truth.loc[f"{s}_study", l] == 1 for s, l in zip(df["study_id"], df["label"]))
    kinds = pd.Series([p["kind"] for p in problems]).value_counts().to_dict()
    assert kinds == {"missing_file": 1 + siim.MAX_LISTED, "multi_image_study": 1}
    assert problems[0]["detail"].startswith(f"{6334 - 32} of the 6334 labelled images")
    frontal, _, _ = siim.load(tmp_path, "binary")
    assert len(frontal) == 30 and frontal["study_id"].is_unique
    table = build_table("siim", tmp_path, "binary", valid_pct=0.2, multi_image="skip")
    assert len(table) == 28 and set(table["split"]) == {"train", "valid"}
    assert set(table["label"]) <= {"Negative", "Positive"}
    assert not [p for p in table.attrs["problems"] if p["kind"] in ("unreadable", "shared_patient")]
