"""What the input guard (cxr_fast/data/guards.py) sees on real chest X-rays and on pydicom's own test files.

    python bench/guard_stats.py [--data ../shared/data] [--out bench/guard_stats.json]

For every image of coronahack/ and darkcovidnet/: colourfulness, aspect ratio and the 1-99 percentile
gray range (the three numbers the guard thresholds), their extremes, and how many images the guard flags;
for every pydicom test file that reads as an image: the warnings it gets.
"""
import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_fast.data import guards
from cxr_fast.data.images import IMAGE_SUFFIXES, load_image


def image_stats(path):
    "(colourfulness, aspect ratio, gray range, warnings) of one raster image."
    with Image.open(path) as img:
        w, h = img.size
        thumb = img.convert("RGB")
        thumb.thumbnail((guards.THUMB, guards.THUMB))
        colour = guards.colourfulness(np.asarray(thumb))
    gray = load_image(path, draft_size=(guards.THUMB * 2, guards.THUMB * 2))
    gray.thumbnail((guards.THUMB, guards.THUMB))
    return colour, max(w, h) / min(w, h), guards.gray_range(gray), guards.input_warnings(path)


def real_images(data):
    "Stats over the real images."
    paths = sorted(p for d in ("coronahack", "darkcovidnet") for p in (data / d).rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES)
    stats = [image_stats(p) for p in paths]
    colour, aspect, span = (np.array([s[i] for s in stats]) for i in range(3))
    flagged = [(str(p), s[3]) for p, s in zip(paths, stats) if s[3]]
    return {"images": len(paths), "colourfulness_max": float(colour.max()),
            "colourfulness_p99": float(np.percentile(colour, 99)), "aspect_max": float(aspect.max()),
            "gray_range_min": float(span.min()), "flagged": len(flagged), "flagged_examples": flagged[:10]}


def pydicom_files():
    "Warnings for pydicom's test files that read as an image."
    from pydicom.data import get_testdata_files
    out = {}
    for f in sorted(get_testdata_files()):
        p = Path(f)
        if not p.is_file() or p.suffix not in (".dcm", ""): continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gray = load_image(p)
                out[p.name] = guards.input_warnings(p, gray)
        except Exception:
            continue
    return {"readable_images": len(out), "flagged": sum(bool(w) for w in out.values()),
            "not_flagged": sorted(k for k, w in out.items() if not w), "warnings": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default=str(Path(__file__).with_name("guard_stats.json")))
    args = ap.parse_args()
    result = {"real": real_images(Path(args.data)), "pydicom": pydicom_files()}
    Path(args.out).write_text(json.dumps(result, indent=1))
    real, dcm = result["real"], result["pydicom"]
    print(json.dumps({k: v for k, v in real.items() if k != "flagged_examples"}, indent=1))
    print(f"pydicom test files: {dcm['flagged']} of {dcm['readable_images']} readable images flagged; "
          f"not flagged: {dcm['not_flagged']}")


if __name__ == "__main__":
    main()
