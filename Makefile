# SIRA: two commands. `make demo` runs the platform end to end on embedded
# defaults; `make test` runs the whole test suite. Both set up .venv themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sira-installed
DEMO_SCALE ?= 1

.PHONY: demo test test-fast test-unit lint bench venv clean tools observe

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	DEMO_SCALE=$(DEMO_SCALE) $(BIN)/sira demo

# Prometheus and Alertmanager on a local SIRA (docs/observability.md): `sira demo --keep-serving` or
# `sira serve` in another terminal; notifications are printed here unless SIRA_OBSERVE_* name real secrets.
observe: $(STAMP) tools
	$(BIN)/python deploy/observe.py $(OBSERVE_ARGS)

test: lint tools
	$(BIN)/python -m pytest

# Debian's Prometheus and Alertmanager (promtool, amtool: tests/deploy/test_observability.py checks the
# alert rules, the Prometheus and Alertmanager configs with them). Installed where apt-get can (root);
# elsewhere those tests skip and name the package.
tools:
	@command -v promtool >/dev/null && command -v amtool >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager \
	      >/dev/null 2>&1 && echo "installed Debian's prometheus and prometheus-alertmanager"; } || \
	  echo "promtool/amtool unavailable (Debian packages prometheus, prometheus-alertmanager): their tests will skip"

# Undefined and unused names, redefinitions, syntax errors (pyproject.toml's [tool.ruff]): seconds, first.
# Then types in core, features and registry (pyproject.toml's [tool.mypy] names the files).
lint: $(STAMP)
	$(BIN)/ruff check sira tests benchmarks jobs
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

# The loop while working: every test but the Ray Serve applications and the end-to-end runs (tests/e2e).
test-fast: lint
	$(BIN)/python -m pytest -m "not serve and not e2e and not slow"

# Benchmarks print one JSON line each: ratios against a baseline measured in the same run.
bench: $(STAMP)
	$(BIN)/python benchmarks/online_features.py
	$(BIN)/python benchmarks/feature_fold.py
	$(BIN)/python benchmarks/stream_latency.py
	$(BIN)/python benchmarks/ingest_throughput.py
	$(BIN)/python benchmarks/dataset_build.py
	$(BIN)/python benchmarks/tune_speedup.py
	$(BIN)/python benchmarks/train_time.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/batch_score.py
	$(BIN)/python benchmarks/drift_time.py

clean:
	rm -rf $(VENV) .pytest_cache
