"""Kaggle downloads into data/ (through the `kaggle` package), or the path of an existing copy."""
import os
from pathlib import Path

from ..core.errors import CxrError

DATASETS = {  # name -> (kind, reference, folder under data/); 'manual': not on Kaggle, the URL to get it from
    "coronahack": ("dataset", "praveengovi/coronahack-chest-xraydataset", "coronahack"),
    "siim": ("competition", "siim-covid19-detection", "siim"),
    "darkcovidnet": ("manual", "https://github.com/muhammedtalo/COVID-19 (folder 'X-Ray Image DataSet')", "darkcovidnet"),
    "khulna": ("manual", "https://data.mendeley.com/datasets/mxc6vb7svm (covid/, normal/, pneumonia/)", "khulna"),
}
KAGGLE_INPUT = Path("/kaggle/input")


def kaggle_input_copy(name):
    "The dataset's folder under /kaggle/input when running in a Kaggle notebook, else None."
    if DATASETS[name][0] == "manual": return None
    slug = DATASETS[name][1].split("/")[-1]
    path = KAGGLE_INPUT / slug
    return path if path.is_dir() else None


def has_credentials():
    "Whether the kaggle package will find an API token (kaggle.json or environment)."
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"): return True
    if os.environ.get("KAGGLE_API_TOKEN"): return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def manual_hint(name, dest):
    kind, ref, _ = DATASETS[name]
    if kind == "manual": return f"download it from {ref} and put the class folders in {dest}"
    url = f"https://www.kaggle.com/{'competitions/' if kind == 'competition' else 'datasets/'}{ref}"
    return f"or download {url} by hand and unzip it into {dest}"


def download(name, data_dir="data", force=False):
    "Download and unzip a dataset into data_dir/<name>; returns its folder."
    if name not in DATASETS: raise CxrError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    kind, ref, folder = DATASETS[name]
    existing = kaggle_input_copy(name)
    if existing is not None and not force: return existing
    dest = Path(data_dir) / folder
    if dest.is_dir() and any(dest.iterdir()) and not force: return dest
    if kind == "manual": raise CxrError(f"{name} is not on Kaggle: {manual_hint(name, dest)}")
    if not has_credentials():
        raise CxrError(f"no Kaggle API token: put kaggle.json in ~/.kaggle/ (Kaggle > Settings > API > Create New Token) "
                       f"or set KAGGLE_USERNAME and KAGGLE_KEY; {manual_hint(name, dest)}")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        api.authenticate()
        dest.mkdir(parents=True, exist_ok=True)
        if kind == "competition":
            api.competition_download_files(ref, path=str(dest), quiet=False)
            _unzip_all(dest)
        else:
            api.dataset_download_files(ref, path=str(dest), unzip=True, quiet=False)
    except CxrError:
        raise
    except Exception as e:  # network, 403 (competition rules not accepted), 404
        raise CxrError(f"Kaggle download of {ref} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"check the network and that you accepted the dataset's rules on Kaggle, {manual_hint(name, dest)}") from None
    return dest


def _unzip_all(folder):
    import zipfile
    for z in Path(folder).glob("*.zip"):
        with zipfile.ZipFile(z) as f: f.extractall(folder)
        z.unlink()
