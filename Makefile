# cxr_fast: the two set-up commands are `make demo` (install + built-in demo) and `make test`.
PYTHON ?= python3
RUN ?= runs
ARGS ?=
PYTEST = $(PYTHON) -m pytest

.PHONY: install demo test test-all test-realdata recipes-quick bench bench-accuracy clean help

help:
	@echo "make demo            install cxr_fast and train on built-in synthetic phantoms (no download)"
	@echo "make test            the test suite (fast tests + real-data tests when ../shared/data exists)"
	@echo "make test-all        every test, slow ones included"
	@echo "make recipe-NAME     run a recipe, e.g. make recipe-resnet18 ARGS='--data data/coronahack'"
	@echo "make recipes-quick   every recipe in smoke mode on tiny data"
	@echo "make bench           speed benchmarks -> bench/results.json, bench/results.md"
	@echo "make bench-accuracy  5-fold CV on DarkCovidNet -> bench/accuracy.json, bench/accuracy.md"

install:
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"

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
	$(PYTHON) bench/bench_accuracy.py --out bench/accuracy.json

clean:
	rm -rf $(RUN) build dist *.egg-info
