"""What a careless or hostile user tries, as they type it: a tampered model.json, a missing model.pth, a symlink
loop, an image past the pixel limit."""
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cxr_fast.cli import main
from cxr_fast.data.images import MAX_PIXELS, set_max_pixels

FIXTURE = Path(__file__).parent / "fixtures" / "model_v0.1.0"


@pytest.fixture(autouse=True)
def default_pixel_limit():
    "--max-pixels sets the process's limit: give it back for the tests after these."
    yield
    set_max_pixels(MAX_PIXELS)


@pytest.fixture
def model_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE, folder)
    Image.new("L", (40, 40), 128).save(tmp_path / "x.png")
    return folder


def tamper(folder, **fields):
    meta = json.loads((folder / "model.json").read_text())
    meta.update(fields)
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("fields, named", [
    ({"img_size": "96"}, "field 'img_size' must be a positive integer"),
    ({"img_size": -1}, "field 'img_size' must be a positive integer"),
    ({"classes": ["Normal", "Pneumonia"]}, "field 'classes' names 2 classes but 'n_out' is 3"),
    ({"n_out": True}, "field 'n_out' must be a positive integer"),
    ({"normalize": {"mean": [0.5], "std": [0.2]}}, "field 'normalize' must be"),
])
def test_a_tampered_model_json_is_a_one_line_error_naming_the_field(model_copy, capsys, fields, named):
    tamper(model_copy, **fields)
    assert main(["predict", str(model_copy), str(model_copy.parent / "x.png"), "--out",
                 str(model_copy.parent / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.json" in err[0] and named in err[0], err
    assert not (model_copy.parent / "p.csv").exists()


def test_a_missing_model_pth_is_called_missing_not_damaged(model_copy, capsys):
    (model_copy / "model.pth").unlink()
    assert main(["predict", str(model_copy), str(model_copy.parent / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pth: missing" in err[0] and "damaged" not in err[0]


def test_a_symlink_loop_in_a_folder_gets_an_error_row(model_copy, capsys):
    folder = model_copy.parent / "scans"
    folder.mkdir()
    Image.new("L", (40, 40), 100).save(folder / "ok.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    out = model_copy.parent / "p.csv"
    assert main(["predict", str(model_copy), str(folder), "--out", str(out)]) == 1
    rows = out.read_text().splitlines()
    assert len(rows) == 3 and any("loop.png" in r and "symbolic link that loops" in r for r in rows)
    assert "1 of 2 image(s) could not be read" in capsys.readouterr().err


def test_an_image_over_the_pixel_limit_is_an_error_row_never_decoded(model_copy, capsys):
    folder = model_copy.parent / "scans"
    folder.mkdir()
    Image.new("L", (40, 40), 100).save(folder / "ok.png")
    Image.new("1", (9000, 8000)).save(folder / "bomb.png")  # 72 Mpx, a few kB on disk
    out = model_copy.parent / "p.csv"
    assert main(["predict", str(model_copy), str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "DecompressionBomb" not in err
    bomb = [r for r in out.read_text().splitlines() if "bomb.png" in r][0]
    assert "9000 x 8000 pixels (72 megapixels) is over the limit of 50 megapixels" in bomb and "--max-pixels" in bomb
    assert main(["predict", str(model_copy), str(folder / "bomb.png"), "--out", str(out), "--max-pixels",
                 "80000000"]) == 0  # raised: read


def test_a_run_folder_is_claimed_one_process_at_a_time_and_a_killed_claim_frees_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from cxr_fast.core.errors import CxrError
    from cxr_fast.core.lock import claim_folder
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cxr_fast.core.lock import claim_folder\n"
                               f"with claim_folder({str(tmp_path / 'run')!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(CxrError, match=r"run is in use by another training \(pid \d+, since"):
        with claim_folder(tmp_path / "run", "training"): pass
    os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the operating system lets go
    holder.wait()
    with claim_folder(tmp_path / "run", "training"): pass


def test_two_trainings_started_together_into_one_out_one_is_refused(folders_root, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "x"
    cmd = [sys.executable, "-m", "cxr_fast", "train", "folders", str(folders_root), "--task", "folders", "--arch",
           "test_resnet", "--pretrained", "false", "--plan", "all:2@1e-3", "--size", "32", "--bs", "8",
           "--num-workers", "0", "--audit", "false", "--out", str(out)]
    runs = [subprocess.Popen([*cmd, "--seed", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for s in (1, 2)]
    done = [(p.wait(300), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in done) == [0, 2], done
    refused = next(err for code, err in done if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("in use by another training" in refused[0] or "already holds a run" in refused[0])
    seed = json.loads((out / "config.json").read_text())["seed"]
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3  # a header and one run's two epochs
    assert json.loads((out / "model" / "model.json").read_text())["training"]["seed"] == seed  # one run's files
