"""Wheels for a Kaggle notebook with Internet off (`make wheelhouse`): cxr_fast and every package it needs that the
notebook's image lacks, so that `pip install --no-index --find-links wheelhouse "cxr_fast[weights]"` installs.

    python tools/wheelhouse.py --out wheelhouse [--python-version 3.11] [--all]

The image has HAS (torch, torchvision, fastai, timm, pandas, scikit-learn, matplotlib, kaggle) and what they depend
on. pip resolves, installing nothing (`pip install --dry-run --ignore-installed --report`), every distribution
`cxr_fast[weights]` needs and every one HAS brings; the wheels of the difference are downloaded (fire and its
termcolor, pydicom, the pylibjpeg decoders, the weights packages, ...). --python-version resolves for the notebook's
Python on manylinux x86_64; --all downloads every dependency instead (GBs: torch).
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HAS = ("torch", "torchvision", "fastai", "timm", "pandas", "scikit-learn", "matplotlib", "kaggle")
EXTRAS = "weights"  # the extra the notebook installs: cxr_fast[weights]
# Kaggle's image is Ubuntu 22.04 (glibc 2.35); pip does not widen one manylinux tag to the older ones, so list them
PLATFORMS = (*(f"manylinux_2_{v}_x86_64" for v in range(35, 16, -1)), "manylinux2014_x86_64", "manylinux2010_x86_64",
             "manylinux1_x86_64", "linux_x86_64")


def canonical(name):
    "A distribution name as pip compares them (PEP 503)."
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args, quiet=True):
    "Run pip in this Python; exit with its error output when it fails."
    cmd = [sys.executable, "-m", "pip", *args, *(["--quiet"] if quiet else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"  # a find-links/index folder that lacks a name
        err = "\n".join(line for line in (done.stderr or done.stdout).splitlines() if noise not in line)
        sys.exit(f"wheelhouse: `pip {' '.join(args[:2])} ...` failed:\n{err[-3000:]}")
    return done


def target(python_version):
    "pip options choosing the notebook's wheels: binary only, and its Python and platform when given."
    flags = ["--only-binary=:all:"]
    if python_version:
        flags += ["--python-version", str(python_version)] + [f"--platform={p}" for p in PLATFORMS]
    return flags


def resolve(requirements, flags, tmp):
    "{canonical name: (name, version)} of every distribution pip would install for `requirements` from nothing."
    report = Path(tempfile.mkstemp(dir=tmp, suffix=".json")[1])
    pip("install", "--dry-run", "--ignore-installed", "--report", str(report), *flags, *requirements)
    items = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): (i["metadata"]["name"], i["metadata"]["version"]) for i in items}


def build(out, python_version=None, every=False, has=HAS, project="."):
    "Write the wheelhouse to `out` (replaced when complete); returns the file names in it."
    out = Path(out)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    flags = target(python_version)
    pip("wheel", "--no-deps", "--wheel-dir", str(work), str(project))
    wheel = next(work.glob("cxr_fast-*.whl"))
    wanted = f"{wheel.resolve()}[{EXTRAS}]"
    with tempfile.TemporaryDirectory(prefix="wheelhouse_") as tmp:
        if every:
            pip("download", "--dest", str(work), *flags, wanted)
        else:
            needed = resolve([wanted], flags, tmp)
            present = resolve(list(has), flags, tmp)
            missing = sorted(f"{name}=={version}" for key, (name, version) in needed.items()
                             if key not in present and key != "cxr-fast")
            if missing: pip("download", "--no-deps", "--dest", str(work), *flags, *missing)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return sorted(p.name for p in out.iterdir())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="wheelhouse")
    ap.add_argument("--python-version", default=None, help="the notebook's Python, e.g. 3.11 (default: this one)")
    ap.add_argument("--all", action="store_true", help="every dependency, torch included (GBs)")
    ap.add_argument("--has", default=",".join(HAS), help="what the notebook has, comma-separated")
    args = ap.parse_args(argv)
    names = build(args.out, args.python_version, args.all, [h for h in args.has.split(",") if h.strip()])
    print(f"{args.out}: {len(names)} wheels\n  " + "\n  ".join(names))


if __name__ == "__main__":
    main()
