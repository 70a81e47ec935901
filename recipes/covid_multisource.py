"""COVID-19 / Normal / Pneumonia from several collections, each class from more than one: fewer hospital shortcuts.

In DarkCovidNet every class comes from one collection, so a model trained on it tells the collection, and is at
chance where COVID-19 and normal come from the same hospitals (docs/shortcuts.md). This recipe trains the same
fine-tune (EfficientNet-Lite0 from pip-installed ImageNet weights, head then all with discriminative rates) on every
source under ROOT that has one of the three classes (data/multisource.py: darkcovidnet, coronahack, hannover,
montgomery, jsrt; `--sources a,b` picks some), each split by patient (by image where it has no patient ids),
sampled so that each source weighs the same within its class (`balance_sources`), at most MAX_PER_SOURCE training
images per source and class, every image kept whole, padded to a square and passed through JPEG q90
(ACQUISITION_PATH: where COVID-19 and normal share hospitals it measured better than the square crop, for this recipe
and for DarkCovidNet alone). It never reads ROOT/external_hospitals for training; `--within-hospital PATH` scores the
trained model there (evaluation only) into the report and the model card. `make bench-hospitals` measured its
choices on that within-hospital set (docs/shortcuts.md): more sources alone did not make a model see COVID-19 there.
"""
from cxr_fast.apps import recipes
from cxr_fast.data.multisource import COLLECTIONS, multisource_table
from cxr_fast.evaluation.runs import record_within_hospital
from cxr_fast.training.options import ACQUISITION_PATH
from cxr_fast.training.run import train

SOURCES = tuple(COLLECTIONS)  # every source; `--sources a,b` picks some
MAX_PER_SOURCE = 400  # train images per (source, class): 1,700 in all on ../shared/data, about 10 min on 2 cores
BEST = dict(arch="tf_efficientnet_lite0", pretrained=True, size=160, bs=32, lr=2e-3, opt="adamw", aug="cxr",
            loss="ce", label_smoothing=0.1, train_bn=False, cache=True, monitor="valid_loss", members=1,
            balance_sources=True, oversample=False, **ACQUISITION_PATH,
            plan="head:2@1e-2,all:6@1e-4:2e-3")


def run(data="data", out="runs/covid-multisource", sources=SOURCES, max_per_source=MAX_PER_SOURCE,
        preprocessing=BEST["preprocessing"], resize_method=BEST["resize_method"], jpeg_quality=BEST["jpeg_quality"],
        size=BEST["size"], plan=BEST["plan"], members=BEST["members"], within_hospital=None, valid_pct=0.1,
        test_pct=0.0, seed=42, precision="auto", overwrite=True, quick=False):
    """Train COVID-19 / Normal / Pneumonia on the sources under DATA (laid out as ../shared/data).

    sources: which of darkcovidnet, coronahack, hannover, montgomery, jsrt; max_per_source: train images per source
    and class (0: all); preprocessing, resize_method, jpeg_quality: as train's (default: ACQUISITION_PATH, whole
    images padded square through JPEG q90, which measured better within hospitals than the square crop);
    plan: the freeze plan; members: a deep ensemble of N; within_hospital: a folder with COVID-19/ and Normal/ from
    the same hospitals, scored after training (evaluation only); test_pct: each source's share held out as test."""
    root = recipes.need_data(data, "darkcovidnet")
    table = multisource_table(root, sources, valid_pct=valid_pct, test_pct=test_pct, seed=seed,
                              max_per_source=recipes.SMOKE["rows_per_class"] if quick else max_per_source)
    table = recipes.cap_table(table) if quick else table
    chosen = dict(preprocessing=preprocessing, resize_method=resize_method, jpeg_quality=jpeg_quality, size=size,
                  plan=plan, members=min(members, 2) if quick else members, seed=seed, precision=precision,
                  overwrite=overwrite)
    options = recipes.fit_options(quick, **{**BEST, **chosen})
    if quick: options.update(pretrained=BEST["pretrained"], plan="head:1@1e-2,all:1@1e-4:2e-3")
    result = recipes.headline(train(table=table, out=out, **options))
    if within_hospital: result["within_hospital"] = record_within_hospital(result["run_dir"], within_hospital)
    return result
