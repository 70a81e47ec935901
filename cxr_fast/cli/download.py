"""`download`: a Kaggle dataset into data/."""
from pathlib import Path

from ..data.download import DATASETS, download
from ..core.args import as_bool


def download_command(name=None, data_dir="data", force=False, list=False):
    """Download a Kaggle dataset into DATA_DIR/<name> (needs a Kaggle API token).

    Args:
      name: coronahack or siim (Kaggle); darkcovidnet, khulna (manual downloads: says where from)
      data_dir: where datasets land (default data/)
      force: download again even when the folder is not empty
      list: list the datasets and where they go
    """
    if as_bool(list, "list") or name is None:
        for key, (kind, ref, folder) in DATASETS.items():
            where = f"kaggle {kind} {ref}" if kind != "manual" else f"manual download from {ref}"
            print(f"{key:<13} {where} -> {Path(data_dir) / folder}")
        return 0
    path = download(str(name), data_dir, as_bool(force, "force"))
    print(f"{name}: {path}")
    return 0
