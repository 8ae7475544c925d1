# jaas-py developer entry points. `make demo` and `make test` are the two
# commands the README promises; everything they need is installed by them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(HOME)/.cache/jaas-py
ONCE ?=

.PHONY: all venv controlplane flux otelcol promtool native corpus controlplane-mod test lint typecheck unit e2e demo clean

all: test

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python >= 3.11 is required ($(PYTHON) is $$($(PYTHON) --version))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# Builds (or reuses from ~/.cache/jaas-py) kube-apiserver and etcd, and fetches
# Flux's source CRDs. See tools/controlplane/.
controlplane:
	@tools/controlplane/build.sh >/dev/null

# Builds (or reuses from ~/.cache/jaas-py) Flux's source-controller and
# kustomize-controller and an OCI registry from their Go modules. See tools/flux/.
flux:
	@tools/flux/build.sh >/dev/null

# Builds (or reuses from ~/.cache/jaas-py) an OpenTelemetry Collector (OTLP
# receiver, file exporter) with the collector builder. See tools/otelcol/.
otelcol:
	@tools/otelcol/build.sh >/dev/null

# Builds (or reuses from ~/.cache/jaas-py) promtool from the Prometheus Go
# module, which checks and unit-tests deploy/prometheus/. See tools/promtool/.
promtool:
	@tools/promtool/build.sh >/dev/null

# Builds (or reuses from ~/.cache/jaas-py) jaas-jrsonnet, the native Jsonnet
# module in native/, and installs its wheel in the virtualenv. Needs cargo.
# See tools/native/.
native: venv
	@JAAS_VENV=$(CURDIR)/$(VENV) tools/native/build.sh >/dev/null

# Fetches go-jsonnet 0.22's test corpus (its Go module) for tests/conformance,
# before pytest enters the loopback-only network namespace.
corpus:
	@GOMODCACHE=$${JAAS_CACHE:-$(CACHE)}/go/mod GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download github.com/google/go-jsonnet@v0.22.0

# Regenerates tools/controlplane/go.mod and go.sum after a version bump.
controlplane-mod:
	tools/controlplane/generate-gomod.sh

lint: venv
	$(VENV)/bin/ruff check jaas tests loadtests
	$(VENV)/bin/ruff format --check jaas tests loadtests

typecheck: venv native
	$(VENV)/bin/mypy jaas tests loadtests

unit: venv native promtool
	$(VENV)/bin/pytest tests/unit

e2e: venv native controlplane flux otelcol
	tools/netns/run $(VENV)/bin/pytest tests/e2e

# The whole suite: lint, types, unit and end-to-end tests on a real control plane.
test: venv native controlplane flux otelcol promtool corpus
	$(VENV)/bin/ruff check jaas tests loadtests
	$(VENV)/bin/ruff format --check jaas tests loadtests
	$(VENV)/bin/mypy jaas tests loadtests
	tools/netns/run $(VENV)/bin/pytest

# Starts a control plane and `jaas operator --shards 2`, applies examples/ and
# shows the result. ONCE=1 stops after printing and fails unless all are Ready.
demo: venv native controlplane flux
	$(PY) -m jaas.demo $(if $(ONCE),--once,)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
