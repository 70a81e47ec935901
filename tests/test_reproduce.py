"""bench/reproduce.py (`make reproduce`): the layer mapping onto the substitute, the documents' shapes, resuming."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import reproduce  # noqa: E402
from reproduce_originals import ORIGINALS  # noqa: E402


def test_named_layers_map_onto_lite0_by_depth():
    assert reproduce.map_layers(["conv1", "layer1", "layer3"], "resnet18") == \
        ["conv_stem", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.5"]
    assert reproduce.map_layers(["layer4"], "resnet18") == ["blocks.6", "conv_head"]
    assert reproduce.map_layers(["features.10"], "vgg16") == ["blocks.2"]  # finer than Lite0: the unit holding it
    assert reproduce.map_layers(["features.0"], "vgg16") == ["conv_stem"]
    assert reproduce.map_layers(["features.28"], "vgg16") == ["conv_head"]
    assert reproduce.map_freeze_to(2, "densenet121") == 5  # the top half of the body's groups + the head


def test_mapped_units_are_layers_of_the_substitute():
    from cxr_fast.models.registry import build_model, named_layer
    model = build_model(reproduce.SUBSTITUTE, 2)
    for name in reproduce.UNITS[reproduce.SUBSTITUTE]: named_layer(model, name)


def test_plan_substitutes_only_when_weights_are_missing(tmp_path):
    missing = reproduce.recipe_plan("resnet18", tmp_path, available=lambda arch: False)
    assert missing["substitute"] and missing["args"][2:] == \
        ["--frozen-features", "true", "--arch", reproduce.SUBSTITUTE,
         "--layers", "conv_stem+blocks.0+blocks.1+blocks.2+blocks.4+blocks.5"]
    here = reproduce.recipe_plan("vgg16", tmp_path, available=lambda arch: True, frozen_features=False)
    assert not here["substitute"] and here["args"] == ["--data", str(tmp_path / "coronahack")]
    multi = reproduce.recipe_plan("multilabel", tmp_path, available=lambda arch: arch == "resnet18")
    assert multi["args"][-2:] == ["--archs", reproduce.SUBSTITUTE]  # one of the two missing: both substituted


def fake_run(name, plan, out, quick=False, log=print):
    "What a finished recipe leaves: OUT/recipe.json and a run folder per variant with metrics.json, config.json."
    runs = {}
    for i, v in enumerate(ORIGINALS[name]["variants"]):
        run_dir = Path(out) / v["variant"]
        run_dir.mkdir(parents=True, exist_ok=True)
        acc = 0.7 + 0.1 * i
        metrics = {"test": {"n": 10, "accuracy": acc, "macro_f1": acc - 0.05, "auc": 0.9,
                            "per_class": {"Normal": {"recall": 0.8}, "Infected": {"recall": 0.6}},
                            "ci": {"accuracy": [acc - 0.1, acc + 0.1]}}}
        config = {"arch": plan["arch"], "size": 224, "plan": [{"train": "head" if i == 0 else "all", "epochs": 10}],
                  "frozen_features": True, "start_weights": {"source": "pip package"}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        (run_dir / "config.json").write_text(json.dumps(config))
        runs[v["variant"]] = {"run_dir": str(run_dir)}
    (Path(out) / "recipe.json").write_text(json.dumps({"results": {**runs, "comparison": "comparison.md"}}))
    return {"rc": 0, "cpu_minutes": 1.5, "wall_minutes": 1.0, "started": "now"}


def test_documents_hold_only_what_was_measured_and_a_rerun_skips_it(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce, "run_recipe", lambda *a, **k: calls.append(a[0]) or fake_run(*a, **k))
    monkeypatch.setattr(reproduce, "weights_available", lambda arch: False)
    doc_json = tmp_path / "docs" / "reproduction.json"
    args = ["--recipes", "resnet18", "--data-root", str(tmp_path), "--work", str(tmp_path / "work"),
            "--json", str(doc_json)]
    reproduce.main(args)
    doc = json.loads(doc_json.read_text())
    assert list(doc["recipes"]) == ["resnet18"]  # not run: absent, never a placeholder
    entry = doc["recipes"]["resnet18"]
    assert set(entry["variants"]) == {"fc", "layers", "all"}
    for v in entry["variants"].values():
        assert 0 <= v["accuracy"] <= 1 and {"macro_f1", "recall", "auroc", "ci", "backbone", "image_size",
                                            "epochs"} <= set(v)
    assert entry["backbone"] == reproduce.SUBSTITUTE and entry["cpu_minutes"] == 1.5 and entry["machine"]["cpu_model"]
    assert entry["conclusion"].startswith("holds: all 0.900 vs fc 0.700")
    assert [k for k, v in entry["variants"].items() if v["frozen_features"]] == ["fc"]  # the head-only run
    md = doc_json.with_suffix(".md").read_text()
    assert "0.900 (0.800-1.000)" in md and "in place of resnet18" in md
    assert md.count("not run yet") == sum(len(ORIGINALS[n]["variants"]) for n in ("vgg16", "multilabel",
                                                                                  "resnet50-coronahack",
                                                                                  "densenet121-3class"))
    assert "densenet121-siim" in md and "DICOM" in md and "Frozen-feature head training: fc" in md
    reproduce.main(args)  # resumed: the recorded recipe is not run again
    assert calls == ["resnet18"]


def test_a_lift_claim_is_judged_on_the_head_stage_and_recollect_rereads_run_folders(tmp_path, monkeypatch):
    "resnet50-coronahack's original claims the unfrozen stage lifts 0.9375 -> 1.0: a head stage already at 1.0 is no lift."
    monkeypatch.setattr(reproduce, "run_recipe", fake_run)
    monkeypatch.setattr(reproduce, "weights_available", lambda arch: False)
    doc_json = tmp_path / "r.json"
    args = ["--recipes", "resnet50-coronahack", "--data-root", str(tmp_path), "--work", str(tmp_path / "w"),
            "--json", str(doc_json)]
    reproduce.main(args)
    run_dir = Path(json.loads(doc_json.read_text())["recipes"]["resnet50-coronahack"]["variants"]["head-then-all"]["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["valid"] = {**metrics.pop("test"), "accuracy": 1.0, "ci": {"accuracy": [1.0, 1.0]}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    def history(head_end):
        (run_dir / "history.csv").write_text("stage,trains,epoch,train_loss,valid_loss,accuracy\n"
                                             f"1,head,0,0.5,0.4,0.8\n1,head,1,0.3,0.2,{head_end}\n2,all,0,0.2,0.1,1.0\n")
    (run_dir / "audit.json").write_text(json.dumps({"verdict": {"level": "shortcut", "text": "COVID-19 is predictable "
                                                                "from file facts alone (AUROC 0.97)."}}))
    for head_end, verdict in ((1.0, "does not hold"), (0.9, "holds")):
        history(head_end)
        reproduce.main(args + ["--recollect"])
        entry = json.loads(doc_json.read_text())["recipes"]["resnet50-coronahack"]
        assert entry["conclusion"].startswith(verdict + ": ours 1.000"), entry["conclusion"]
        assert f"ended at {head_end:.3f}" in entry["conclusion"]
    md = doc_json.with_suffix(".md").read_text()
    assert "Shortcut audit of the training table" in md and "file facts alone (AUROC 0.97)" in md


def test_a_failed_recipe_is_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "run_recipe", lambda *a, **k: {"rc": 1, "cpu_minutes": 0.1, "wall_minutes": 0.1})
    monkeypatch.setattr(reproduce, "weights_available", lambda arch: True)
    doc_json = tmp_path / "r.json"
    with pytest.raises(SystemExit, match="run the same command again to continue it"):
        reproduce.main(["--recipes", "vgg16", "--data-root", str(tmp_path), "--work", str(tmp_path / "w"),
                        "--json", str(doc_json)])
    assert json.loads(doc_json.read_text())["recipes"] == {}
    assert len(json.loads((tmp_path / "w" / "vgg16" / "attempts.json").read_text())) == 1


def test_recipe_without_weights_names_the_pip_installable_arch_in_one_line(tmp_path):
    if reproduce.weights_available("resnet18"): pytest.skip("resnet18's ImageNet weights are on this machine")
    proc = subprocess.run([sys.executable, "-m", "cxr_fast", "recipe", "resnet18", "--data", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "CXR_FAST_OFFLINE": "1"}, timeout=120)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "weights for resnet18" in line]
    assert proc.returncode != 0 and len(errors) == 1 and "--arch tf_efficientnet_lite0" in errors[0]


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_reproduction_on_the_shared_data(tmp_path, shared_data, monkeypatch):
    doc_json = tmp_path / "reproduction.json"
    args = ["--quick", "--recipes", "densenet121-3class", "--data-root", str(shared_data),
            "--work", str(tmp_path / "work"), "--json", str(doc_json)]
    reproduce.main(args)
    entry = json.loads(doc_json.read_text())["recipes"]["densenet121-3class"]
    assert set(entry["variants"]) == {"feature-extraction", "fine-tuning"} and entry["quick"]
    assert all(0 <= v["accuracy"] <= 1 and v["split"] == "test" and v["frozen_features"]
               for v in entry["variants"].values())
    assert (tmp_path / "work" / "densenet121-3class" / "console.log").read_text().count("epoch 1/1") >= 2
    monkeypatch.setattr(reproduce, "run_recipe", lambda *a, **k: pytest.fail("a recorded recipe ran again"))
    reproduce.main(args)


def test_again_keeps_the_earlier_run_and_an_interrupted_one_resumes_without_losing_it(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "weights_available", lambda arch: False)
    doc_json, work = tmp_path / "r.json", tmp_path / "w"
    args = ["--recipes", "resnet50-coronahack", "--data-root", str(tmp_path), "--work", str(work), "--json", str(doc_json)]
    monkeypatch.setattr(reproduce, "run_recipe", fake_run)
    reproduce.main(args)
    first = json.loads(doc_json.read_text())["recipes"]["resnet50-coronahack"]
    monkeypatch.setattr(reproduce, "run_recipe", lambda *a, **k: {"rc": 1, "cpu_minutes": 0.1, "wall_minutes": 0.1})
    with pytest.raises(SystemExit, match="run the same command again"):
        reproduce.main(args + ["--again"])
    assert "resnet50-coronahack" not in json.loads(doc_json.read_text())["recipes"]  # the old record waits in the run folder
    kept = work / "resnet50-coronahack.1"
    assert (kept / "recipe.json").exists() and (work / "resnet50-coronahack" / "earlier.json").exists()
    monkeypatch.setattr(reproduce, "run_recipe", fake_run)
    reproduce.main(args)  # the same command again (no --again needed): it continues, and keeps the earlier run
    entry = json.loads(doc_json.read_text())["recipes"]["resnet50-coronahack"]
    assert [e["conclusion"] for e in entry["earlier"]] == [first["conclusion"]]
    assert entry["earlier"][0]["variants"]["head-then-all"]["run_dir"].startswith(str(kept.resolve()))
    md = doc_json.with_suffix(".md").read_text()
    assert "- An earlier run: head-then-all 0.700 (test accuracy" in md
    assert f"Wall time, the latest run of each recipe: 1 min (0 h 1 min): resnet50-coronahack {entry['wall_minutes']}" in md
