# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The repo root is the Dagster instance home: dagster.yaml lives here, its data under .dagster/.
export DAGSTER_HOME := $(CURDIR)

.PHONY: constraints setup browser postgres netns lint typecheck check demo test dev bench clean

setup: $(VENV)/.installed

# Every package at the version CI tested (constraints.txt); pyproject.toml says what is needed.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned or newer torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

demo: setup
	$(BIN)/python -m llm_pipeline.demo

# Two workers, one test module each at a time (module fixtures stay shared within a module): the
# service tests spend much of their time waiting, and the other worker runs beside them. In the
# order conftest.py gives (they first), not xdist's default of the modules with most tests first.
# More workers than CI's two cores measured slower (four: 23.6 minutes against 21-26 with two;
# the CPU is the limit, docs/tests.md).
# The whole run in a private network namespace of loopback alone (as root: CI is): there a local Ray
# cluster keeps to 127.0.0.1, while on a host interface whose traffic is filtered its nodes cannot
# reach each other. Nothing the tests run needs the network; the installs above happen outside it.
test: setup browser postgres netns lint typecheck
	unshare -n sh -c 'ip link set lo up && exec $(BIN)/python -m pytest -q -ra --durations=25 -n 2 --dist loadfile --no-loadscope-reorder'

# The fast loop: lint, formatting, types and every test that starts no service and launches no rank
# (markers `e2e` and `service`). No root and no network namespace: none of these tests needs them.
check: setup lint typecheck
	$(BIN)/python -m pytest -q -m "not e2e and not service" -n 2 --dist loadfile

# ruff's lint rules and formatting (pyproject.toml), on the library, its tests and its benchmarks.
lint: setup
	$(BIN)/ruff check llm_pipeline llm_pipeline_tests benchmarks
	$(BIN)/ruff format --check llm_pipeline llm_pipeline_tests benchmarks

# mypy on the library (pyproject.toml: [tool.mypy]).
typecheck: setup
	$(BIN)/mypy

# Headless Chromium for the UI test (a screenshot of the asset page); Debian's package, as root.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# unshare (util-linux) and ip (iproute2) for the tests' private network namespace; Debian's packages, as root.
netns:
	@command -v ip >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }

# PostgreSQL for the production-instance tests (Debian's package; the tests start their own server).
postgres:
	@test -x /usr/lib/postgresql/15/bin/initdb || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The peers the benchmarks compare against (datatrove, spaCy, datasketch) are a benchmark-only extra.
bench: setup
	$(BIN)/pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python -m benchmarks.corpus_bench

# constraints.txt again from this venv, after a change to pyproject.toml (run make bench first: the
# benchmark peers are constrained too). torch is written without its local label (+cpu).
constraints: setup
	$(BIN)/pip install -q -c constraints.txt -e ".[test,bench]"
	{ sed -n 1,2p constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

dev: setup
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf .storage .dagster
