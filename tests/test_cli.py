import pandas as pd
import pytest

from cxr_fast.core.args import as_bool, as_int, as_list
from cxr_fast.cli import main
from cxr_fast.core.errors import CxrError


def test_usage_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "table", "download", "train", "evaluate", "predict", "recipe", "compare"):
        assert f"  {cmd}" in out


def test_unknown_command_and_user_errors_are_one_line(capsys, tmp_path):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    assert main(["table", "folders", str(tmp_path / "none"), "--task", "folders"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data root") and "\n" not in err and "Traceback" not in err


def test_table_command_writes_csv_and_prints_counts_and_problems(capsys, coronahack_root, tmp_path):
    out = tmp_path / "t.csv"
    assert main(["table", "coronahack", str(coronahack_root), "--task", "3class", "--valid-pct", "0.25",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "COVID-19" in text and "missing_file: 1" in text and "unreadable: 1" in text and "covid-missing.jpeg" in text
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_table_command_source_options_are_coerced_and_checked(capsys, coronahack_root):
    assert main(["table", "coronahack", str(coronahack_root), "--task", "normal-vs-covid", "--kaggle-split", "false",
                 "--test-pct", "0.2", "--balance", "0.5"]) == 0
    capsys.readouterr()
    assert main(["table", "coronahack", str(coronahack_root), "--task", "3class", "--multi-image", "skip"]) == 2
    assert "--multi_image do not apply to source coronahack" in capsys.readouterr().err
    assert main(["table", "coronahack", str(coronahack_root), "--task", "3class", "--dedup", "maybe"]) == 2
    assert "--dedup must be one of" in capsys.readouterr().err


def test_fire_values_coerced():
    assert as_bool("false", "x") is False and as_bool("True", "x") is True and as_bool(0, "x") is False
    assert as_int(1, "n") == 1 and as_int("001", "n") == 1 and as_int(3.0, "n") == 3
    assert as_list("a, b", "l") == ["a", "b"] and as_list(("a", "b")) == ["a", "b"] and as_list(None) == []
    with pytest.raises(CxrError, match="--pretrained must be true or false"):
        as_bool("maybe", "pretrained")
    with pytest.raises(CxrError, match="--epochs must be >= 1"):
        as_int(0, "epochs", 1)
    with pytest.raises(CxrError, match="--bs must be an integer"):
        as_int("x", "bs")


def test_download_without_credentials_fails_fast_with_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"): monkeypatch.delenv(var, raising=False)
    assert main(["download", "coronahack", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "kaggle.json" in err and "praveengovi/coronahack-chest-xraydataset" in err and str(tmp_path / "data") in err
    assert main(["download", "darkcovidnet", "--data-dir", str(tmp_path / "data")]) == 2
    assert "muhammedtalo/COVID-19" in capsys.readouterr().err


def test_download_returns_existing_copy(capsys, tmp_path):
    (tmp_path / "data" / "coronahack").mkdir(parents=True)
    (tmp_path / "data" / "coronahack" / "x").write_text("")
    assert main(["download", "coronahack", "--data-dir", str(tmp_path / "data")]) == 0
    assert str(tmp_path / "data" / "coronahack") in capsys.readouterr().out


# ---- --kaggle-split false: the string 'false' is true in Python, so each command must convert it -------

def test_kaggle_split_false_reaches_the_source_as_false_in_table(coronahack_root, tmp_path):
    out = tmp_path / "t.csv"
    assert main(["table", "coronahack", str(coronahack_root), "--task", "normal-vs-pneumonia", "--kaggle-split", "false",
                 "--out", str(out)]) == 0
    assert "test" not in set(pd.read_csv(out)["split"])  # no test split carved: TEST rows joined the train pool


def test_kaggle_split_false_reaches_the_source_as_false_in_train(coronahack_root, tmp_path, monkeypatch):
    from cxr_fast.training import run as training

    class Stop(Exception):
        "Raised once the run's table.csv is written."

    def stop(*args, **kwargs): raise Stop
    monkeypatch.setattr(training, "build_learner", stop)
    with pytest.raises(Stop):
        main(["train", "coronahack", str(coronahack_root), "--task", "normal-vs-pneumonia", "--kaggle-split", "false",
              "--pretrained", "false", "--out", str(tmp_path / "run")])
    assert "test" not in set(pd.read_csv(tmp_path / "run" / "table.csv")["split"])


def test_kaggle_split_false_reaches_the_source_as_false_in_evaluate(coronahack_root, tmp_path, capsys):
    import torch

    from cxr_fast.models.registry import build_model, default_head
    from cxr_fast.models.folder import save_model_dir
    torch.manual_seed(0)
    meta = {"arch": "resnet18", "head": default_head(), "n_out": 2, "classes": ["Normal", "Pneumonia"],
            "task": "normal-vs-pneumonia", "multilabel": False, "img_size": 32, "resize_method": "squish",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "thresholds": {"positive": 0.5}}
    model_dir = save_model_dir(build_model("resnet18", 2), tmp_path / "run" / "model", meta)
    assert main(["evaluate", str(model_dir), "coronahack", str(coronahack_root), "--split", "test",
                 "--kaggle-split", "false"]) == 2
    assert "no images in split 'test'" in capsys.readouterr().err  # with kaggle_split true, TEST rows are the test split
