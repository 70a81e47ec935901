"""bench/bench_hospitals.py (`make bench-hospitals`): a recipe trained and scored where both classes share hospitals."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_hospitals as bench  # noqa: E402
from test_hospitals import multisource_root  # noqa: E402


def test_the_bench_trains_a_recipe_and_heads_its_table_with_the_within_hospital_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path / "cache"))
    root = multisource_root(tmp_path / "data")
    out = tmp_path / "h.json"
    name = "covid-multisource[quick=true;valid_pct=0.3;sources=darkcovidnet,hannover,jsrt]"
    assert bench.main(["--experiments", name, "--seeds", "3", "--data", str(root), "--runs", str(tmp_path / "runs"),
                       "--out", str(out)]) == 0
    run = json.loads(out.read_text())["results"][f"{name} / 3"]
    assert run["within_hospital"]["n_pos"] == 4 and run["within_hospital"]["n_neg"] == 4
    assert set(run["adult_normals_not_trained_on"]) == {"montgomery"}  # JSRT was trained on
    assert run["held_out"]["n"] > 0 and "cross_source_pair" not in run  # Hannover is in training: no pair
    assert run["sources"] == ["darkcovidnet", "hannover", "jsrt"]
    md = out.with_suffix(".md").read_text()
    assert md.index("within-hospital AUROC") < md.index("cross-source pair")  # the headline comes first
    assert f"| {name} | 3 |" in md
    mtime = out.stat().st_mtime_ns
    assert bench.main(["--experiments", name, "--seeds", "3", "--data", str(root), "--runs", str(tmp_path / "runs"),
                       "--out", str(out)]) == 0  # resumable: nothing trained again
    assert json.loads(out.read_text())["results"][f"{name} / 3"]["measured"] == run["measured"]
    assert out.stat().st_mtime_ns == mtime


def fake(auroc, montgomery=None, pair=None):
    h = {"auroc": auroc, "ci": [auroc - 0.1, auroc + 0.1], "n_pos": 59, "n_neg": 21, "normals_called_covid": 0.2,
         "hospitals": {"Actualmed": {"auroc": auroc - 0.05, "ci": None, "n_pos": 26, "n_neg": 18}}}
    return {"within_hospital": h, "held_out": {"accuracy": 0.85, "n": 180}, "train_minutes": 5.0, "sources": ["x"],
            "adult_normals_not_trained_on": {"montgomery": {"share": montgomery}} if montgomery is not None else {},
            **({"cross_source_pair": {"auroc": pair}} if pair is not None else {})}


def test_means_over_seeds_and_the_leave_one_source_out_table():
    loso = "covid-multisource[sources=darkcovidnet,coronahack,hannover,jsrt]"
    results = {"covid-multisource / 42": fake(0.7), "covid-multisource / 1": fake(0.8),
               f"{loso} / 42": fake(0.6, montgomery=0.05),
               "darkcovidnet-pretrained / 42": fake(0.58, montgomery=0.1, pair=0.999)}
    md = bench.markdown(results, {"cpu_model": "cpu", "cores": 2, "torch": "2"})
    assert "| covid-multisource | 42,1 | 0.750 | 0.700 |" in md
    assert f"| montgomery | {loso} | 42 | 0.600 |" in md.split("## Leave one source out")[1]
    assert "0.999" in md and "collections, not disease" in md
    assert bench.left_out("covid-multisource") == "" and bench.left_out("darkcovidnet-pretrained") is None
    assert bench.split_experiments("a[x=1,2;y=3],b") == ["a[x=1,2;y=3]", "b"]
