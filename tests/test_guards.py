"""The input guard: DICOM modality/body part/view, coloured, oddly shaped and blank images; preamble-less DICOM."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_gray, xray_like
from cxr_fast.data import guards
from cxr_fast.data.dicom import dicom_header, looks_like_dicom, read_dicom_image, write_dicom
from cxr_fast.core.errors import DataError
from cxr_fast.data.images import is_dicom_file, load_image

REAL_DICOM = Path(__file__).parents[2] / "shared" / "data" / "dicom" / "nih_chestxray14_no_finding.dcm"
XRAY = xray_like(64)


def warnings_of(path):
    return guards.input_warnings(path)


@pytest.mark.parametrize("elements, words", [
    ({"Modality": "CT"}, "Modality CT"),
    ({"Modality": "MR"}, "Modality MR"),
    ({"Modality": "RTDOSE"}, "Modality RTDOSE"),
    ({"Modality": "US"}, "Modality US"),
    ({"Modality": "NM", "BodyPartExamined": "WHOLE BODY"}, "BodyPartExamined WHOLE BODY"),
    ({"Modality": "CR", "BodyPartExamined": "CSPINE"}, "BodyPartExamined CSPINE is not the chest"),
    ({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "LL"}, "ViewPosition LL is a lateral view"),
    ({"Modality": "DX", "ViewPosition": "LATERAL"}, "lateral view"),
])
def test_dicom_of_another_kind_is_flagged(tmp_path, elements, words):
    path = write_dicom(tmp_path / "x.dcm", XRAY, **elements)
    found = warnings_of(path)
    assert any(words in w for w in found), found
    assert np.asarray(load_image(path)).shape == (64, 64)  # still readable: a warning, not an error


def test_colour_dicom_is_flagged(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red: an ultrasound-like colour overlay
    path = write_dicom(tmp_path / "us.dcm", rgb, photometric="RGB", bits_stored=8, Modality="US")
    found = " ".join(warnings_of(path))
    assert "Modality US" in found and "PhotometricInterpretation RGB" in found


@pytest.mark.parametrize("elements", [
    {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
    {"Modality": "CR", "BodyPartExamined": "TORAX", "ViewPosition": "AP"},  # SIIM's Spanish tags
    {"Modality": "DR", "BodyPartExamined": "PORT CHEST"},
    {"Modality": "DX"},  # body part and view absent: nothing to say
])
def test_frontal_chest_radiograph_dicom_is_not_flagged(tmp_path, elements):
    assert warnings_of(write_dicom(tmp_path / "ok.dcm", XRAY, **elements)) == []


def test_chest_and_lateral_words():
    assert guards.is_chest("Tórax") and guards.is_chest("PECHO") and guards.is_chest("chest pa") and not guards.is_chest("SKULL")
    assert guards.is_lateral("LL") and guards.is_lateral("lateral") and not guards.is_lateral("PA")
    assert not guards.is_lateral("LLD")  # lateral decubitus: a frontal projection of a patient lying on a side


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DICOM.is_file(), reason="../shared/data/dicom not present")
def test_real_chest_dicom_is_not_flagged():
    assert warnings_of(REAL_DICOM) == []


def test_raster_images(tmp_path):
    assert warnings_of(save_gray(tmp_path / "xray.png")) == []
    gray_rgb = Image.fromarray(np.dstack([XRAY] * 3), "RGB")  # an RGB file holding a gray X-ray
    gray_rgb.save(tmp_path / "gray_rgb.jpg", quality=95)
    assert warnings_of(tmp_path / "gray_rgb.jpg") == []
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    photo[..., 2] //= 4  # strongly coloured
    Image.fromarray(photo, "RGB").save(tmp_path / "photo.png")
    assert any("strongly coloured" in w for w in warnings_of(tmp_path / "photo.png"))
    Image.fromarray(xray_like(200)[:40], "L").save(tmp_path / "strip.png")  # 200x40
    assert any("aspect ratio 200x40" in w for w in warnings_of(tmp_path / "strip.png"))
    Image.fromarray(np.full((64, 64), 128, np.uint8), "L").save(tmp_path / "blank.png")
    assert any("almost constant" in w for w in warnings_of(tmp_path / "blank.png"))
    # the decoded image handed in is used for the pixel check
    assert guards.input_warnings(tmp_path / "xray.png", gray=Image.new("L", (64, 64), 7))[0].startswith("almost constant")
    assert guards.safe_input_warnings(tmp_path / "missing.png") == ""


def test_warnings_become_table_problems():
    problems = guards.warning_problems(["a.png", "b.png"], ["", "almost constant image"])
    assert problems == [{"kind": "input_warning", "path": "b.png", "detail": "almost constant image"}]


# ---- DICOM without the preamble -----------------------------------------------------------------

def test_preamble_less_dicom_reads(tmp_path):
    corners = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    path = write_dicom(tmp_path / "old.dcm", corners, preamble=False, PatientID="P-9", Modality="CR")
    data = path.read_bytes()
    assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"  # starts with the dataset itself
    assert np.asarray(read_dicom_image(path)).tolist() == [[0, 100], [200, 255]]
    assert dicom_header(path)["PatientID"] == "P-9"
    bare = path.rename(tmp_path / "IMG0001")  # old files often have no suffix either
    assert looks_like_dicom(bare) and is_dicom_file(bare)
    assert np.asarray(load_image(bare)).tolist() == [[0, 100], [200, 255]]
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    assert np.asarray(load_image(write_dicom(tmp_path / "r.dcm", ramp, preamble=False))).max() == 255


def test_bytes_that_do_not_parse_as_dicom_are_still_refused(tmp_path):
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x08\x00" + np.random.default_rng(0).bytes(3000))  # starts like DICOM, is not
    assert not looks_like_dicom(fake)
    with pytest.raises(DataError, match="not a DICOM file"):
        load_image(fake)
    text = tmp_path / "notes"
    text.write_text("no image here")
    assert not is_dicom_file(text)


# ---- where the warnings show: predict's CSV, the table step ---------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    "An untrained resnet18 model dir (32 px, binary): enough to predict with."
    from cxr_fast.models.registry import build_model, default_head
    from cxr_fast.models.folder import save_model_dir
    meta = {"arch": "resnet18", "head": default_head(), "n_out": 2, "classes": ["Normal", "Pneumonia"],
            "task": "binary", "multilabel": False, "loss": "ce", "img_size": 32, "resize_method": "squish",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "thresholds": {"positive": 0.5}, "data": {"source": "phantom"}, "metrics": {}}
    return save_model_dir(build_model("resnet18", 2).eval(), tmp_path_factory.mktemp("m") / "model", meta)


def test_predict_warns_in_a_column_and_still_predicts(model_dir, tmp_path, capsys):
    from cxr_fast.cli import main
    inputs = tmp_path / "in"
    good = save_gray(inputs / "chest.png")
    ct = write_dicom(inputs / "ct.dcm", XRAY, Modality="CT")
    lateral = write_dicom(inputs / "lat.dcm", XRAY, Modality="DX", ViewPosition="LL")
    Image.fromarray(np.full((64, 64), 90, np.uint8), "L").save(inputs / "blank.png")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model_dir), str(inputs), "--out", str(out)]) == 0  # warnings are not errors
    err = capsys.readouterr().err
    assert "3 of 4 image(s) do not look like frontal chest X-rays" in err and "MODEL_CARD.md" in err
    import pandas as pd
    df = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert list(df.columns)[-2:] == ["error", "warning"]
    assert df.loc[str(good), "warning"] == ""
    assert "Modality CT" in df.loc[str(ct), "warning"] and "lateral" in df.loc[str(lateral), "warning"]
    assert "almost constant" in df.loc[str(inputs / "blank.png"), "warning"]
    assert (df["pred"] != "").all() and (df["error"] == "").all()  # every file predicted


def test_table_step_counts_input_warnings(tmp_path, capsys):
    from cxr_fast.data.load import print_table_report
    from cxr_fast.data.table import build_table
    root = tmp_path / "data"
    for cls in ("Normal", "Pneumonia"):
        for i in range(4): save_gray(root / cls / f"{cls}{i}.png", seed=i, bright_spot=cls == "Pneumonia")
    write_dicom(root / "Normal" / "mr.dcm", XRAY, Modality="MR")
    Image.fromarray(xray_like(200)[:40], "L").save(root / "Pneumonia" / "strip.png")
    table = build_table("folders", root, "folders", valid_pct=0.25, dedup="off")
    assert len(table) == 10  # flagged images are kept
    flagged = [p for p in table.attrs["problems"] if p["kind"] == "input_warning"]
    assert sorted(Path(p["path"]).name for p in flagged) == ["mr.dcm", "strip.png"]
    print_table_report(table)
    assert "input_warning: 2" in capsys.readouterr().out


# ---- clear errors for model dirs whose weights are not what model.json says -----------------------

def test_model_json_and_model_pth_that_disagree_say_so_in_one_line(model_dir, tmp_path, capsys):
    import shutil

    import torch

    from cxr_fast.cli import main
    from cxr_fast.models.registry import build_model
    image = save_gray(tmp_path / "x.png")
    for name, other in (("head", build_model("resnet18", 3)), ("arch", build_model("resnet34", 2))):
        bad = tmp_path / name
        shutil.copytree(model_dir, bad)
        torch.save(other.state_dict(), bad / "model.pth")
        assert main(["predict", str(bad), str(image)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "model.json and model.pth disagree" in err and "resnet18" in err, err
        assert "size mismatch" not in err and "Missing key" not in err


class Payload:
    "What a malicious model.pth could hold: an object whose unpickling calls a function."
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_model_pth_holding_code_is_refused_without_relaying_torch(model_dir, tmp_path, capsys):
    import shutil

    import torch

    from cxr_fast.cli import main
    from cxr_fast.models.registry import build_model
    image = save_gray(tmp_path / "x.png")
    for name, payload in (("object", {"weight": Payload()}), ("module", build_model("resnet18", 2))):
        bad = tmp_path / name
        shutil.copytree(model_dir, bad)
        torch.save(payload, bad / "model.pth")
        assert main(["predict", str(bad), str(image)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "\n" not in err and "contains pickled code" in err and "will not load it" in err, err
        assert "weights_only" not in err and "this ran while loading" not in captured.out + captured.err
