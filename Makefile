# SIRA: two commands. `make demo` runs the platform end to end on embedded
# defaults; `make test` runs the whole test suite. Both set up .venv themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sira-installed
DEMO_SCALE ?= 1

.PHONY: demo test test-fast test-unit lint bench venv clean tools observe web screenshots

venv: $(STAMP)

$(STAMP): pyproject.toml tests/broker-requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r tests/broker-requirements.txt
	@touch $(STAMP)

demo: $(STAMP) web
	DEMO_SCALE=$(DEMO_SCALE) $(BIN)/sira demo

# The ops dashboard (web/: React + TypeScript, Vite) built into sira/http/ui, where SIRA serves it at /ui.
# npm ci only when package-lock.json changed; without Node.js 20.19+ it says so and the UI is absent.
NODE_OK := node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a == 20 && b >= 19) ? 0 : 1)'
web:
	@if command -v npm >/dev/null && $(NODE_OK) 2>/dev/null; then \
	  { [ web/node_modules/.sira-installed -nt web/package-lock.json ] || \
	    { (cd web && npm ci --no-audit --no-fund --loglevel=error) && touch web/node_modules/.sira-installed; }; } && \
	  (cd web && npm run --silent build >/dev/null) && echo "web UI built into sira/http/ui (served at /ui)"; \
	else echo "Node.js 20.19+ with npm not found (Debian: nodejs, npm): the web UI (/ui) is not built and its tests skip"; fi

# Prometheus and Alertmanager on a local SIRA (docs/observability.md): `sira demo --keep-serving` or
# `sira serve` in another terminal; notifications are printed here unless SIRA_OBSERVE_* name real secrets.
observe: $(STAMP) tools
	$(BIN)/python deploy/observe.py $(OBSERVE_ARGS)

# Two pytest-xdist workers: one holds the session's local Ray and every test of it, the other takes the
# rest a module at a time (tests/conftest.py: worker_group). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

test: lint tools web
	$(BIN)/python -m pytest $(XDIST)

# The README's pictures of the UI (docs/images/ui-*.png), taken by its browser tests in Debian's Chromium.
screenshots: $(STAMP) tools web
	SIRA_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/e2e/test_ui.py

# Debian's Prometheus and Alertmanager (promtool, amtool: tests/deploy/test_observability.py checks the
# alert rules, the Prometheus and Alertmanager configs with them) and Chromium (the web UI's browser tests,
# driven by Playwright: browsers are not downloadable here, Debian's is). Installed where apt-get can
# (root); elsewhere those tests skip and name the package.
tools:
	@command -v promtool >/dev/null && command -v amtool >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager \
	      >/dev/null 2>&1 && echo "installed Debian's prometheus and prometheus-alertmanager"; } || \
	  echo "promtool/amtool unavailable (Debian packages prometheus, prometheus-alertmanager): their tests will skip"
	@command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 && \
	    echo "installed Debian's chromium"; } || \
	  echo "chromium unavailable (Debian package chromium): the web UI's browser tests will skip"

# Undefined and unused names, redefinitions, syntax errors (pyproject.toml's [tool.ruff]): seconds, first.
# Then types in core, features and registry (pyproject.toml's [tool.mypy] names the files).
lint: $(STAMP)
	$(BIN)/ruff check sira tests benchmarks jobs
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

# The loop while working: every test but the Ray Serve applications and the end-to-end runs (tests/e2e).
test-fast: lint
	$(BIN)/python -m pytest $(XDIST) -m "not serve and not e2e and not slow"

# Benchmarks print one JSON line each: ratios against a baseline measured in the same run.
bench: $(STAMP)
	$(BIN)/python benchmarks/online_features.py
	$(BIN)/python benchmarks/feature_fold.py
	$(BIN)/python benchmarks/fold_compile.py
	$(BIN)/python benchmarks/feature_quality.py
	$(BIN)/python benchmarks/stream_latency.py
	$(BIN)/python benchmarks/kafka_latency.py
	$(BIN)/python benchmarks/ingest_throughput.py
	$(BIN)/python benchmarks/dataset_build.py
	$(BIN)/python benchmarks/tune_speedup.py
	$(BIN)/python benchmarks/train_time.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/batch_score.py
	$(BIN)/python benchmarks/drift_time.py

clean:
	rm -rf $(VENV) .pytest_cache
