"""bench/bench_shortcuts.py (`make bench-shortcuts`): experiments with changed options, and the report's tables."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_shortcuts as bench  # noqa: E402


def test_an_experiment_takes_changed_options_in_brackets():
    base = bench.experiment_config("pretrained")
    changed = bench.experiment_config("pretrained[size=224;train_bn=true;arch=tf_efficientnet_lite2]")
    assert base["size"] == 160 and changed["size"] == 224 and changed["train_bn"] is True
    assert base["members"] == 1 and bench.experiment_config("pretrained[members=3]")["members"] == 3
    assert changed["arch"] == "tf_efficientnet_lite2" and changed["plan"] == base["plan"]
    longer = bench.experiment_config("pretrained[epochs=10;tta=true]")
    assert "all:10@" in longer["plan"] and longer["tta"] is True  # the plan follows the changed epochs
    back = bench.experiment_config("hack-pretrained")
    assert back["size"] == bench.BACK_SIZE and f"all:{bench.BACK_EPOCHS}@" in back["plan"]
    with pytest.raises(SystemExit, match="'sise' is not one of train's options"):
        bench.experiment_config("pretrained[sise=224]")
    with pytest.raises(SystemExit, match="'head_epochs' is not one of train's options"):  # scratch has no head stage
        bench.experiment_config("scratch[head_epochs=3]")
    with pytest.raises(SystemExit, match="not 'pretrianed'"):
        bench.experiment_config("pretrianed")


def forward(acc, unseen):
    return {"in_source": {"accuracy": acc, "covid_auroc": 0.98, "covid_recall": 0.9, "n": 180},
            "cross_source": {"covid_vs_normal_auroc_unseen": unseen, "covid_recall_unseen": 0.9, "covid_vs_normal_auroc": 0.9,
                             "test_called_covid": 0.4, "test_pneumonia_vs_normal_auroc": 0.4},
            "train_minutes": 3.0}


def test_report_means_seeds_and_keeps_the_reverse_direction_and_the_audits_apart():
    results = {"pretrained / border / 42": forward(0.8, 0.7), "pretrained / border / 1": forward(0.7, 0.9),
               "hack-pretrained / none / 42": {
                   "in_source": {"accuracy": 0.8, "pneumonia_auroc": 0.9, "valid_covid_recall": 1.0, "n": 624},
                   "cross_source": {"nih_pneumonia_vs_normal_auroc": 0.61, "nih_called_covid": 0.25,
                                    "covid_vs_normal_auroc_unseen": 0.77, "covid_recall_unseen": 0.3},
                   "train_minutes": 8.0}}
    results["pretrained / border / 42"]["audit"] = {
        "border_only_covid_auroc": 0.88, "center_only_covid_auroc": 0.9, "full_probe_covid_auroc": 0.95,
        "gradcam_outside_share": 0.3, "gradcam_uniform_share": 0.51, "file_facts_covid_auroc": 1.0,
        "probe": "128 px, test split", "verdict": "shortcut"}
    assert "--rescore" not in bench.markdown(results, {"cpu_model": "test CPU", "cores": 2})
    results["pretrained / border / 1"]["rescored"] = "2026-12-06 04:00 UTC"
    md = bench.markdown(results, {"cpu_model": "test CPU", "cores": 2})
    assert "1 of 3 runs scored again with `--rescore` (2026-12-06 04:00 UTC to 2026-12-06 04:00 UTC)" in md
    means, back = md.split("## Each run")[0], md.split("## And back")[1]
    assert "| pretrained / border | 42,1 | 0.750 |" in means and "| 0.800 |" in means  # unseen mean of 0.7, 0.9
    assert "hack-pretrained" not in means and "| hack-pretrained / none | 42 | 0.800 | 0.900 | 0.610 | 0.250 |" in back
    assert "| pretrained / border / 42 | 0.880 | 0.900 | 0.950 | 0.300 | 1.000 | shortcut |" in md


def test_in_source_figures_are_the_runs_test_split_scored_as_predict_scores_it(folders_root, tmp_path):
    from cxr_fast.training.run import train
    run_dir = tmp_path / "run"
    metrics = train(source="folders", root=folders_root, task="folders", valid_pct=0.2, test_pct=0.3, out=run_dir,
                    arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none", plan="all:1@1e-3",
                    audit=False)
    figures = bench.in_source(run_dir)
    assert figures["n"] == metrics["test"]["n"] and 0 < figures["n"] < 36
    assert figures["accuracy"] == pytest.approx(metrics["test"]["accuracy"])  # the report is fp32 on a CPU too
    assert figures["covid_recall"] == pytest.approx(metrics["test"]["per_class"]["Covid-19"]["recall"])


def test_rescore_and_audit_take_the_runs_named_by_experiment_mitigation_and_seed():
    results = dict.fromkeys(["pretrained / border / 42", "pretrained / border / 1", "pretrained / none / 42",
                             "pretrained[members=3] / border / 42", "hack-pretrained / border / 42"])
    a = type("Args", (), dict(experiments="pretrained,hack-pretrained", mitigations="border", seeds="42"))
    assert bench.selected(results, a) == ["pretrained / border / 42", "hack-pretrained / border / 42"]
