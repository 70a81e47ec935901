"""train()'s options, declared once (training/options.py): the signature, the checks, the help and a saved
config.json all come from the one schema."""
import inspect
import json
from pathlib import Path

import pytest

import cxr_fast
from cxr_fast.cli import main
from cxr_fast.cli.train import train_command
from cxr_fast.core.errors import CxrError
from cxr_fast.training.checkpoints import check_resume
from cxr_fast.training.options import OPTIONS, resolve_config
from cxr_fast.training.run_folder import prepare_run_dir, saved_config

FIXTURE = Path(__file__).parent / "fixtures" / "run_config_v0.1.0.json"  # config.json of a 0.1.0 run (test_resnet)

BAD = {  # option -> (a wrong value, words of its one-line error)
    "arch": ("resnet9000", "unknown architecture"), "plan": ("head:x@1e-3", "--plan stage"),
    "epochs": (0, "--epochs must be >= 1"), "freeze_epochs": (-1, "--freeze-epochs must be >= 0"),
    "lr": ("fast", "bad learning rate"), "lr_find": ("maybe", "--lr-find must be true or false"),
    "pretrained": ("maybe", "--pretrained must be true or false"), "hidden": ("a", "--hidden must be a comma"),
    "dropout": (2, "--dropout must be in [0, 1]"), "concat_pool": ("maybe", "--concat-pool must be true or false"),
    "opt": ("rmsprop", "--opt must be one of adam, adamw, sgd"), "wd": (-1, "--wd must be in [0,"),
    "clip": (0, "--clip must be in"), "bs": (0, "--bs must be >= 1"), "size": (8, "--size must be >= 16"),
    "aug": ("heavy", "--aug must be one of"), "resize_method": ("stretch", "--resize-method must be one of"),
    "preprocessing": ("sharpen", "unknown preprocessing 'sharpen'"),
    "jpeg_quality": ("0:200", "--jpeg-quality 0:200: need 1 <= LO <= HI <= 95"),
    "balance_sources": ("maybe", "--balance-sources must be true or false"),
    "audit": ("maybe", "--audit must be true or false"), "seed": (-1, "--seed must be >= 0"), "members": (17, "--members must be <= 16"),
    "loss": ("hinge", "--loss must be one of"), "label_smoothing": (2, "--label-smoothing must be in [0, 1]"),
    "class_weights": ("a,b", "--class-weights must be a comma-separated list of float"),
    "focal_alpha": (-1, "--focal-alpha must be in [0,"), "focal_gamma": (-1, "--focal-gamma must be in [0,"),
    "calibrate": ("maybe", "--calibrate must be true or false"),
    "target_sensitivity": (2, "--target-sensitivity must be in [0.0, 1.0]"), "tta": ("maybe", "--tta must be true"),
    "subsample_majority": (2, "--subsample-majority must be in"), "oversample": ("maybe", "--oversample must be"),
    "monitor": ("auc", "--monitor must be one of"), "save_best": ("maybe", "--save-best must be true or false"),
    "patience": (0, "--patience must be >= 1"), "train_bn": ("maybe", "--train-bn must be true or false"),
    "bn_stats": ("fix", "--bn-stats must be one of fixed, frozen, train"),
    "frozen_features": ("maybe", "--frozen-features must be true or false"),
    "precision": ("fp8", "--precision must be one of"), "mixed_precision": ("maybe", "--mixed-precision must be"),
    "bf16": ("maybe", "--bf16 must be true or false"), "export_pkl": ("maybe", "--export-pkl must be true or false"),
    "resume": ("maybe", "--resume must be true or false"), "overwrite": ("maybe", "--overwrite must be true"),
    "num_workers": (-1, "--num-workers must be >= 0"), "valid_pct": (0.95, "--valid-pct must be in [0, 0.9]"),
    "test_pct": (0.95, "--test-pct must be in [0, 0.9]"), "dedup": ("maybe", "--dedup must be one of drop, off, warn"),
    "tracker": ("neptune", "--tracker neptune: unknown"), "sync_bn": ("maybe", "--sync-bn must be true or false"),
}
ANY_VALUE = {"source", "root", "task", "weights", "cache", "classes", "tracker_dir"}  # checked where they are used


def test_every_option_has_a_wrong_value_here_or_takes_any():
    assert set(BAD) | ANY_VALUE == set(OPTIONS) and not set(BAD) & ANY_VALUE


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_wrong_value_through_train_is_a_one_line_error(name, tmp_path):
    value, words = BAD[name]
    with pytest.raises(CxrError) as e:
        cxr_fast.train("phantom", tmp_path / "ph", "3class", out=tmp_path / "run", **{"pretrained": False, name: value})
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "ph").exists() and not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_wrong_value_on_the_command_line_is_a_one_line_error(name, tmp_path, capsys):
    value, words = BAD[name]
    flag = "--" + name.replace("_", "-")
    code = main(["train", "phantom", str(tmp_path / "ph"), "--task", "3class", "--out", str(tmp_path / "run"),
                 *(["--pretrained=false"] if name != "pretrained" else []), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "ph").exists() and not (tmp_path / "run").exists()


def test_an_unknown_keyword_names_the_close_matches(tmp_path, capsys):
    with pytest.raises(CxrError, match=r"train has no option --epoch: did you mean --epochs\?"):
        cxr_fast.train("phantom", tmp_path / "ph", "3class", out=tmp_path / "run", epoch=3)
    with pytest.raises(CxrError, match="--patients-per-clas: did you mean --patients-per-class"):
        cxr_fast.train("phantom", tmp_path / "ph", "3class", out=tmp_path / "run", patients_per_clas=3)
    assert main(["train", "phantom", str(tmp_path / "ph"), "--out", str(tmp_path / "run"), "--lr-fnd", "true"]) == 2
    err = capsys.readouterr().err
    assert "train has no option --lr-fnd: did you mean --lr-find?" in err and err.count("\n") == 1
    assert not (tmp_path / "ph").exists() and not (tmp_path / "run").exists()


def test_the_signature_is_the_schema():
    params = inspect.signature(cxr_fast.train).parameters
    named = {n: p.default for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
    assert {n: named[n] for n in OPTIONS} == {n: o.default for n, o in OPTIONS.items()}
    assert set(named) - set(OPTIONS) == {"table", "out", "cbs"}
    assert list(params)[:3] == ["source", "root", "task"]
    assert params["source_options"].kind is inspect.Parameter.VAR_KEYWORD
    command = inspect.signature(train_command).parameters
    assert set(OPTIONS) <= set(command) and not {"table", "cbs"} & set(command)


def test_a_command_without_its_arguments_is_an_error_but_help_is_not(capsys):
    assert main(["train"]) == 2 and main(["audit", "--help"]) == 0 and main(["evaluate", "-h"]) == 0


def test_help_lists_every_option_with_its_help(capsys):
    assert main(["train", "--help"]) == 0  # Fire's help, on stderr (Fire's exit 2 for SOURCE ROOT missing: not an error)
    shown = " ".join(capsys.readouterr().err.split())
    for name, option in OPTIONS.items():
        flag = name.upper() if option.positional and name != "task" else f"--{name}="  # Fire's spelling
        assert flag in shown and " ".join(option.help.split()) in shown, name
    assert main(["train", "phantom", "data/phantom", "--help"]) == 0  # Fire hands --help to train_command
    shown = " ".join(capsys.readouterr().out.split())
    documented = " ".join(cxr_fast.train.__doc__.split())
    for name, option in OPTIONS.items():
        assert f"{name}: {option.help}" in shown and f"{name}: {option.help}" in documented, name


def test_a_saved_config_resolves_to_itself():
    saved = json.loads(FIXTURE.read_text())
    resolved = json.loads(json.dumps(resolve_config(saved), default=str))
    assert {n: resolved[n] for n in OPTIONS if n in saved} == {n: saved[n] for n in OPTIONS if n in saved}
    assert all(resolved[n] == OPTIONS[n].default for n in set(OPTIONS) - set(saved))  # added since 0.1.0
    check_resume(saved_config(FIXTURE), resolve_config(saved), FIXTURE.parent)  # resuming with the same options


@pytest.mark.parametrize("added_since", [["audit", "calibrate", "target_sensitivity"], ["jpeg_quality", "tracker"]])
def test_an_older_config_still_resumes(tmp_path, added_since):
    "A config.json written before an option existed: the option counts as its default, so the run resumes."
    old = {k: v for k, v in json.loads(FIXTURE.read_text()).items() if k not in added_since}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(old))
    given = {k: v for k, v in old.items() if k in OPTIONS or k == "source_options"}  # the same command line
    config = resolve_config({**given, "resume": True})
    saved = prepare_run_dir(tmp_path / "run", config)
    assert saved["plan"] == old["plan"] and all(saved[k] == OPTIONS[k].coerce(OPTIONS[k].default) for k in added_since)
    assert saved_config(tmp_path / "none.json") is None


def test_tune_and_recipes_read_the_same_options(capsys):
    from cxr_fast.apps import recipes
    from cxr_fast.apps.tune import TrainTarget
    from cxr_fast.apps.tune_space import parse_space
    target = TrainTarget("phantom", "data/phantom", "3class")
    target.check(parse_space("lr=1e-4..1e-2:log; aug=cxr|none; dropout=0..0.5; patients_per_class=2..4"))
    with pytest.raises(CxrError, match="--space epoch: neither train nor source phantom .* did you mean epochs"):
        target.check(parse_space("epoch=1..3"))
    with pytest.raises(CxrError, match=r"--space dropout: --dropout must be in \[0, 1\]"):
        target.check(parse_space("dropout=0.1..2"))
    with pytest.raises(CxrError, match="--space aug: --aug must be one of"): target.check(parse_space("aug=cxr|heavy"))
    with pytest.raises(CxrError, match="--pretrained must be true or false"):  # an option every trial gets
        TrainTarget("phantom", "data/phantom", "3class", pretrained="maybe").check(parse_space("lr=1e-4..1e-2"))
    with pytest.raises(CxrError, match="train has no option --epoch: did you mean --epochs"):
        TrainTarget("phantom", "data/phantom", "3class", epoch=3).check(parse_space("lr=1e-4..1e-2"))
    with pytest.raises(CxrError, match="train has no option --dropuot: did you mean --dropout"):
        recipes.fit_options(dropuot=0.5)
    with pytest.raises(CxrError, match=r"--dropout must be in \[0, 1\]"): recipes.fit_options(dropout=2)
    assert main(["recipe", "resnet18", "--help"]) == 0
    dropout = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--dropout"))
    assert OPTIONS["dropout"].help in dropout


def test_evaluate_and_predict_check_the_shared_options_as_train_does(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "model"), "phantom", str(tmp_path / "ph"), "--bs", "0"]) == 2
    assert "--bs must be >= 1" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "x.png"), "--precision", "fp8"]) == 2
    assert "--precision must be one of auto, bf16, fp16, fp32" in capsys.readouterr().err
