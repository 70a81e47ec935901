"""File facts and sources of the shortcut audit: planted shortcuts are found, noise is not, bad input is reported."""
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.core.errors import DataError
from cxr_fast.apps.audit.file_facts import file_facts, read_facts
from cxr_fast.apps.audit.sources import source_audit


def save_noise(path, size=(32, 32), seed=0, fmt=None, mode="L"):
    "A noise image of `size` (width, height) in `mode`, saved in the format the suffix (or `fmt`) names."
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    img = Image.fromarray(arr, mode="L").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_table(tmp_path, per_class=30, classes=("A", "B"), suffix=lambda c: ".png", size=lambda c: (32, 32),
               source=lambda c: "s1", images_per_patient=1):
    "One row per image: patient p of class c has `images_per_patient` noise images."
    rows, seed = [], 0
    for c in classes:
        for p in range(per_class):
            for k in range(images_per_patient):
                seed += 1
                path = save_noise(tmp_path / c / f"{c}-{p}-{k}{suffix(c)}", size(c), seed)
                rows.append({"path": str(path), "patient_id": f"{c}{p}", "split": "train", "label": c, "source": source(c)})
    return pd.DataFrame(rows)


def test_format_shortcut_is_flagged_and_named(tmp_path):
    table = make_table(tmp_path, suffix=lambda c: ".jpeg" if c == "A" else ".png")
    result = file_facts(table)
    print(result["acquisition"], result["top_facts"])
    assert result["acquisition"]["auroc"]["A"] >= 0.95
    assert result["auroc"]["A"] >= 0.95  # the key audit.json reports
    assert result["top_facts"]["A"][0][0] == "format"
    assert result["facts"]["format"] == "acquisition" and result["facts"]["file_size"] == "content"
    assert result["counts"] == {"images": 60, "unreadable": 0, "dicom": 0}


def test_aspect_ratio_shortcut_is_flagged(tmp_path):
    table = make_table(tmp_path, size=lambda c: (48, 32) if c == "A" else (32, 32))
    result = file_facts(table)
    assert result["acquisition"]["auroc"]["A"] >= 0.95
    assert result["top_facts"]["A"][0][0] in ("width", "aspect_ratio")
    assert "height" in result["dropped"]  # constant facts are dropped, not fitted


def test_no_planted_shortcut_is_near_chance(tmp_path):
    table = make_table(tmp_path, per_class=40)
    result = file_facts(table)
    print(result["acquisition"], result["all"])
    assert result["acquisition"]["auroc"]["A"] == pytest.approx(0.5)  # no acquisition fact varies
    assert result["auroc"]["A"] < 0.75 and result["auroc"]["B"] < 0.75
    assert any("no acquisition fact varies" in n for n in result["limitations"])


def test_five_thousand_tiny_files_are_audited(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5000):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(path, compress_level=1)
        rows.append({"path": str(path), "patient_id": f"p{i // 2}", "split": "train", "label": "AB"[(i // 2) % 2], "source": "s"})
    result = file_facts(pd.DataFrame(rows))
    assert result["counts"]["images"] == 5000 and result["counts"]["unreadable"] == 0
    assert result["folds"] == 5


def test_one_class_is_a_one_line_data_error(tmp_path):
    table = make_table(tmp_path, per_class=3, classes=("A",))
    with pytest.raises(DataError, match="at least two classes") as e:
        file_facts(table)
    assert "\n" not in str(e.value) and "only A" in str(e.value)


def test_unreadable_file_is_reported_and_the_rest_audited(tmp_path):
    table = make_table(tmp_path, per_class=10)
    bad = tmp_path / "B" / "not-an-image.png"
    bad.write_text("not an image")
    table.loc[len(table)] = {"path": str(bad), "patient_id": "bad", "split": "train", "label": "B", "source": "s1"}
    result = file_facts(table)
    assert result["counts"] == {"images": 20, "unreadable": 1, "dicom": 0}
    assert result["unreadable"][0]["path"] == str(bad) and result["unreadable"][0]["reason"]


def save_bare_dicom(path, seed=0):
    "A minimal DICOM: pixel data and the image tags it needs, no Manufacturer/Modality/ViewPosition/spacing."
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel, ds.PixelRepresentation = 8, 8, 7, 1, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_without_tags_does_not_crash(tmp_path):
    table = make_table(tmp_path, per_class=10)
    for i in range(10):
        path = save_bare_dicom(tmp_path / f"bare-{i}.dcm", i)
        table.loc[len(table)] = {"path": str(path), "patient_id": f"d{i}", "split": "train", "label": "AB"[i % 2], "source": "s1"}
    facts = read_facts(table["path"])
    assert facts["error"].isna().all() and facts["manufacturer"].isna().all()
    result = file_facts(table, facts=facts)
    assert result["counts"] == {"images": 30, "unreadable": 0, "dicom": 10}
    assert any("lack manufacturer" in n for n in result["limitations"])


def test_real_dicom_header_facts(shared_data):
    path = shared_data / "dicom"
    files = sorted(p for p in path.glob("*") if p.is_file() and p.suffix.lower() == ".dcm") if path.is_dir() else []
    if not files: pytest.skip("no real DICOM")
    row = read_facts(files[:1]).iloc[0]
    assert pd.isna(row["error"]) and row["format"] == "DICOM" and row["width"] == 1024 and row["height"] == 1024


def test_class_with_too_few_patients_is_a_limitation(tmp_path):
    table = make_table(tmp_path, per_class=12, classes=("A", "B"), suffix=lambda c: ".jpeg" if c == "A" else ".png")
    few = make_table(tmp_path / "few", per_class=3, classes=("C",), images_per_patient=2)
    one = make_table(tmp_path / "one", per_class=1, classes=("D",), images_per_patient=3)
    result = file_facts(pd.concat([table, few, one], ignore_index=True))
    assert result["folds"] == 3
    assert result["auroc"]["D"] is None and result["auroc"]["A"] >= 0.95
    assert any("'D' has fewer than 2 patients" in n for n in result["limitations"])
    assert any("3 folds instead of 5" in n for n in result["limitations"])


def test_inputs_are_not_modified(tmp_path):
    table = make_table(tmp_path, per_class=10)
    before = table.copy()
    stats = {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in table["path"]}
    file_facts(table)
    source_audit(table)
    pd.testing.assert_frame_equal(table, before)
    assert all((open(p, "rb").read(), os.stat(p).st_mtime_ns) == s for p, s in stats.items())


def test_multilabel_is_one_binary_problem_per_label(tmp_path):
    table = make_table(tmp_path, per_class=20, classes=("A", "B"), suffix=lambda c: ".jpeg" if c == "A" else ".png")
    rng = np.random.default_rng(0)
    multi = table.drop(columns="label").assign(A=(table["label"] == "A").astype(int), B=rng.integers(0, 2, len(table)))
    result = file_facts(multi)
    assert set(result["auroc"]) == {"A", "B"}
    assert result["auroc"]["A"] >= 0.95 and result["auroc"]["B"] < 0.75


def test_sources_one_source_is_a_note(tmp_path):
    result = source_audit(make_table(tmp_path, per_class=5))
    assert result["n_sources"] == 1 and result["note"] and "auroc" not in result


def test_sources_confounded_class_is_warned_and_sources_told_apart(tmp_path):
    table = make_table(tmp_path, per_class=20, classes=("A", "B", "C"), source=lambda c: "s1" if c == "A" else "s2",
                       suffix=lambda c: ".jpeg" if c == "A" else ".png")
    result = source_audit(table)
    assert result["label_by_source"]["A"] == {"s1": 20}
    assert any("'A'" in w and "'s1'" in w for w in result["warnings"])
    assert not any("'B'" in w for w in result["warnings"])  # B and C share s2: neither comes from a source the others lack
    assert result["auroc"]["s1"] >= 0.95


def test_sources_balanced_gives_no_warning(tmp_path):
    table = make_table(tmp_path, per_class=20, source=lambda c: "s1")
    table.loc[table.index % 2 == 0, "source"] = "s2"
    result = source_audit(table)
    assert result["warnings"] == [] and result["auroc"]["s1"] < 0.75


@pytest.mark.realdata
def test_darkcovidnet_covid_is_flagged_from_acquisition_facts(shared_data):
    from cxr_fast.data.load import load_table
    root = shared_data / "darkcovidnet"
    if not root.is_dir(): pytest.skip("no darkcovidnet")
    result = file_facts(load_table("folders", str(root), "folders"))
    print("acquisition", result["acquisition"], "all", result["all"], "top", result["top_facts"]["Covid-19"],
          f"{result['seconds']} s")
    assert result["acquisition"]["auroc"]["Covid-19"] >= 0.95
    assert result["counts"]["images"] == 899
