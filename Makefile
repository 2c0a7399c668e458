# Two commands for a newcomer: `make test` and `make demo`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: docs test test-quickstart test-unit test-loopback test-compat canary lint install lock clean demo bench bench-emulator bench-waits bench-triggerer bench-triggerer-copies bench-task-start bench-batch bench-batch-rate bench-floor fault-suite \
	system-test system-deps dist

# The older Airflow lines the provider supports; `make test` covers the newest.
COMPAT_AIRFLOW_VERSIONS ?= 3.1 3.2

# Three pytest-xdist workers, handed whole modules in the collection's order (the scheduler is
# pytest_xdist_make_scheduler in tests/conftest.py): the system tests come first, as two units, so two
# workers run them, each on a deployment of its own, while the third runs everything else a module at
# a time, and the other two join it when their unit is nearly done. The tests mostly wait on the
# deployments, so three workers keep two cores busier than two did (`make test`: 518 s against 606 s).
XDIST := -n 3 --no-loadscope-reorder

# pytest exits 5 when it collected no tests: that is a failure, never a pass.
define pytest_strict
$(1); status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status
endef

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv

# Every test environment installs from a lock committed in constraints/: what CI installs is what
# was tested, and a release upstream changes nothing until `make lock` is run on purpose.
LOCK_DIR := constraints
LOCK := $(LOCK_DIR)/dev.txt
UV_COMPILE = $(BIN)/uv pip compile --quiet --upgrade --python-version 3.11 --custom-compile-command 'make lock'

$(STAMP): pyproject.toml $(LOCK) | $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c $(LOCK) -e '.[dev]'
	touch $@

install: $(STAMP)

# Resolve every lock anew from pyproject.toml: the newest Airflow for .venv, and one lock per older
# line for test-compat. Run `make test test-compat` before committing what moved (git diff constraints/).
lock: | $(BIN)/uv
	$(UV_COMPILE) --extra dev --extra docs pyproject.toml -o $(LOCK)
	@set -e; for version in $(COMPAT_AIRFLOW_VERSIONS); do \
		printf '%s\n' "apache-airflow==$$version.*" $(call compat_pins,$$version) \
			| $(UV_COMPILE) --extra dev pyproject.toml - -o $(LOCK_DIR)/airflow-$$version.txt; \
	done
	@git diff --stat -- $(LOCK_DIR) 2>/dev/null || true

# Everything, the system tests on real deployments included, on three workers ($(XDIST), above).
test: $(STAMP) system-deps
	@$(call pytest_strict,$(BIN)/pytest $(XDIST) --durations=15 -m "not fresh_venv")

# README's quickstart, verbatim, in a fresh venv with a fresh AIRFLOW_HOME (about 90 s; CI runs it).
test-quickstart: $(STAMP)
	@$(call pytest_strict,$(BIN)/pytest -q -m fresh_venv tests/integration/test_docs.py)

# One tier alone, for iterating: no I/O at all (seconds), or over loopback HTTP to the emulator.
test-unit: $(STAMP)
	@$(call pytest_strict,$(BIN)/pytest -q tests/unit)

test-loopback: $(STAMP)
	@$(call pytest_strict,$(BIN)/pytest -q $(XDIST) tests/loopback)

# Each older supported Airflow, in its own venv (.venv-airflow-X.Y), on the tests that touch
# Airflow's APIs, its deployment tier included (the emulator's and the benchmarks' own tests do not;
# the quickstart's installs the newest Airflow whatever the venv). Each installs from its lock,
# constraints/airflow-X.Y.txt. Airflow 3.2 does not run on the cadwyn, FastAPI and Starlette releases
# an unconstrained install resolves (its execution API fails to build, then loses its service
# registry under Starlette 1), so its lock is resolved with compat_pins, which hold that line at
# 3.2.1. Airflow 3.1 sets an attribute on cryptography's MultiFernet, which cryptography 51 (written
# in Rust) refuses: every connection read with a Fernet key configured fails there, so its lock holds
# cryptography below 51. The lines run one after the other, each on three workers ($(XDIST)): two
# run the line's deployment tests, the third everything else.
COMPAT_TESTS ?= tests/unit tests/loopback tests/integration tests/system -m "not fault_matrix and not on_deployment and not newest_line and not fresh_venv"
compat_pins = $$(case $(1) in 3.1) echo 'cryptography<51';; 3.2) echo 'cadwyn<8' 'fastapi<0.137' 'starlette<1';; esac)

test-compat: system-deps | $(BIN)/uv
	@set -e; for version in $(COMPAT_AIRFLOW_VERSIONS); do \
		venv=.venv-airflow-$$version; \
		[ -x $$venv/bin/python ] || $(PYTHON) -m venv $$venv; \
		$(BIN)/uv pip install --python $$venv/bin/python --quiet -c $(LOCK_DIR)/airflow-$$version.txt -e '.[dev]'; \
	done
	@failed=0; for version in $(COMPAT_AIRFLOW_VERSIONS); do \
		echo "== Airflow $$version ($(LOCK_DIR)/airflow-$$version.txt)"; started=$$(date +%s); \
		.venv-airflow-$$version/bin/pytest -q -p no:cacheprovider $(XDIST) --durations=10 $(COMPAT_TESTS); \
		status=$$?; echo "== Airflow $$version: pytest exited $$status in $$(( $$(date +%s) - started )) s"; \
		[ $$status -ne 5 ] || echo "pytest collected no tests on Airflow $$version" >&2; \
		[ $$status -eq 0 ] || failed=1; \
	done; exit $$failed

# The next Airflow: the newest release (or a newer pre-release) with whatever resolves today, on the
# unit, loopback, integration and deployment tiers, so its breakage fails here before a user meets it.
# CI runs `make canary CANARY_FLAGS="--if-new --quick"`: unit and loopback only, and nothing while no
# version is newer than the locked lines; a failure there is reported, not blocking.
CANARY_FLAGS ?=
canary: $(STAMP) system-deps
	@bash scripts/canary.sh $(CANARY_FLAGS)

# ruff (its docstring rules on the package) and mypy on the package (see pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml $(LOCK) | $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c $(LOCK) -e '.[dev,docs]'
	touch $@

# The documentation site (MkDocs), into site/; a warning fails the build (mkdocs.yml: strict).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The wheel a pip user installs, until the provider is on PyPI.
DIST_DIR ?= dist
dist: | $(BIN)/uv
	$(BIN)/uv build --quiet --wheel --out-dir $(DIST_DIR)

clean:
	rm -rf $(VENV) .venv-airflow-* .pytest_cache .ruff_cache dist

DEMO_STAMP := $(VENV)/.installed-emulator

$(DEMO_STAMP): pyproject.toml $(LOCK) | $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c $(LOCK) -e '.[emulator]'
	touch $@

# The catalog pipeline end to end on the embedded emulator; results land in .demo/output.
demo: $(DEMO_STAMP)
	$(BIN)/python scripts/demo.py

# recordInfo queries per second the emulator answers, beside a bare aiohttp server.
bench-emulator: $(DEMO_STAMP)
	$(BIN)/python -m airflow_provider_qwen.emulator.bench

# Twenty mapped edits under each fault kind; prints the table docs/reliability.md quotes (make test runs it too).
fault-suite: $(STAMP)
	$(BIN)/pytest -q tests/integration/test_fault_suite.py

# A real deployment: PostgreSQL, the scheduler, dag-processor, triggerer and api-server as separate
# processes, and the emulator; 200 deferred edits through a triggerer crash (60 in `make test`), and
# a worker killed right after it submitted. Installs PostgreSQL from Debian's packages when it is missing.
system-test: $(STAMP) system-deps
	@$(call pytest_strict,QWEN_SYSTEM_EDITS=200 $(BIN)/pytest tests/system)

# A cluster: the CeleryExecutor with two workers, Redis, two triggerers and two api-servers behind a
# load balancer, each a process of its own; 201 edits through a worker, a triggerer and an api-server
# failing mid-run. Installs PostgreSQL and Redis from Debian's packages when they are missing.
.PHONY: cluster-test
cluster-test: $(STAMP)
	@bash scripts/install-system-test-deps.sh
	@$(call pytest_strict,$(BIN)/pytest -m cluster --durations=25 tests/cluster)

# PostgreSQL and Chromium from Debian's packages, for the system test and its browser test; each
# script does nothing when its package is installed.
system-deps:
	@bash scripts/install-system-test-deps.sh
	@bash scripts/install-browser-test-deps.sh

# The provider against HttpOperator + HttpSensor and a PythonOperator sleep loop on a real
# deployment, then the triggerer's capacity; each prints a table docs/benchmarks.md quotes.
bench: bench-waits bench-floor bench-triggerer bench-triggerer-copies bench-task-start bench-batch

# 200 provider edits beside Airflow's two floors on the same deployment: 200 mapped no-op PythonOperator
# tasks, and 200 mapped tasks deferring to DateTimeTrigger for as long as an edit.
bench-floor: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.compare_waits --edits 200 --edit-seconds 6 --workloads a e f --warmup-edits 10

bench-waits: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.compare_waits

bench-triggerer: $(STAMP)
	$(BIN)/python -m benchmarks.triggerer_capacity

# 2,000 waiting triggers while 20 deferred edits copy 20 MB results in the same triggerer, against
# the same triggers alone: their event-loop lag and the process's peak RSS.
bench-triggerer-copies: $(STAMP)
	$(BIN)/python -m benchmarks.triggerer_copies

bench-task-start: $(STAMP)
	$(BIN)/python -m benchmarks.task_start

# N items (default 20,000) in one batch task, the create limit raised, a worker SIGKILLed halfway
# through, in the middle of a burst (about 5 minutes at 20,000; 25 at N=100000).
N ?= 20000
bench-batch: $(STAMP)
	$(BIN)/python -m benchmarks.batch_scale --edits $(N)

# 1,000 items at Apikley's default create limit: the submission's pace against it (about 9 minutes).
bench-batch-rate: $(STAMP)
	$(BIN)/python -m benchmarks.batch_rate
