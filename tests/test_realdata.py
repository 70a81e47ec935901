"""The real Kaggle CoronaHack CSV and images, and DarkCovidNet, from ../shared/data (skipped when absent)."""
import pytest

from cxr_fast.data.table import build_table, summarize

pytestmark = pytest.mark.realdata

# images on disk per task (5,910 CSV rows, 18 of them name images that are not there)
EXPECTED = {
    "normal-vs-pneumonia": ({"Normal": 1575, "Pneumonia": 4317}, 18, 624),
    "normal-vs-covid": ({"Normal": 1575, "COVID-19": 52}, 7, 234),
    "3class": ({"Normal": 1575, "Pneumonia": 4265, "COVID-19": 52}, 18, 624),
    "bacterial-viral": ({"Normal": 1575, "bacteria": 2772, "Virus": 1545}, 16, 624),
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_coronahack_tasks_from_the_real_csv(shared_data, task):
    df = build_table("coronahack", shared_data / "coronahack", task, valid_pct=0.1, dedup="off")
    counts, missing, n_test = EXPECTED[task]
    assert df["label"].value_counts().to_dict() == counts
    assert sum(p["kind"] == "missing_file" for p in df.attrs["problems"]) == missing
    assert not any(p["kind"] == "unreadable" for p in df.attrs["problems"])
    assert df.groupby("patient_id")["split"].nunique().max() == 1  # no patient in two splits
    assert (df["split"] == "test").sum() == n_test  # Kaggle's TEST rows of this task
    valid_share = (df["split"] == "valid").sum() / (df["split"] != "test").sum()
    assert 0.07 < valid_share < 0.13


def test_coronahack_multilabel_from_the_real_csv(shared_data):
    df = build_table("coronahack", shared_data / "coronahack", "multilabel", valid_pct=0.1, dedup="off")
    assert df[["COVID-19", "Pneumonia", "Normal"]].sum().to_dict() == {"COVID-19": 52, "Pneumonia": 4317, "Normal": 1575}
    assert (df.loc[df["COVID-19"] == 1, "Pneumonia"] == 1).all()
    assert df.groupby("patient_id")["split"].nunique().max() == 1


def test_coronahack_copies_across_patients_are_found(shared_data):
    "NORMAL2-IM-0095 and -0096 are two 'patients' with the same image: in different splits they are reported."
    import pandas as pd
    from cxr_fast.data.images import dhash, load_image
    from cxr_fast.data.table import near_duplicate_pairs
    folder = shared_data / "coronahack" / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset" / "test"
    names = ["NORMAL2-IM-0095-0001.jpeg", "NORMAL2-IM-0096-0001.jpeg", "IM-0001-0001.jpeg"]
    df = pd.DataFrame({"path": [str(folder / n) for n in names], "split": ["train", "valid", "test"]})
    hashes = [dhash(load_image(p, draft_size=(128, 128))) for p in df["path"]]
    assert near_duplicate_pairs(df, hashes) == [(0, 1)]


def test_darkcovidnet_folders(shared_data):
    df = build_table("folders", shared_data / "darkcovidnet", "3class", valid_pct=0.1, test_pct=0.1)
    assert df["label"].value_counts().to_dict() == {"No_findings": 400, "Pneumonia": 400, "Covid-19": 99}
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert summarize(df).loc["total images"].sum() == 899
