# The two commands of the README: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck proto proto-check buf-lint buf-breaking unit integration bench clean venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/greenchannel demo

# Everything, with the process-killing fault scenarios at their short level (about a minute);
# `make faults` runs the long level.
test: $(STAMP) lint typecheck proto-check buf-lint buf-breaking
	GREENCHANNEL_FAULTS_LEVEL=short $(BIN)/python -m pytest --durations=25 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Regenerate the committed Python beside the .proto files.
proto: $(STAMP)
	$(BIN)/python proto/generate.py

# Fails when regenerating would change any committed file.
proto-check: $(STAMP)
	$(BIN)/python proto/generate.py --check

buf-lint: $(STAMP)
	$(BIN)/python proto/generate.py --lint

buf-breaking: $(STAMP)
	$(BIN)/python proto/generate.py --breaking-against main

# Benchmarks: timing lives here, never in test assertions. Results also go to build/bench-*.json.
bench: $(STAMP)
	@mkdir -p build
	$(BIN)/python -m tests.bench.bench_submit --n 1000 --json build/bench-submit.json
	$(BIN)/python -m tests.bench.bench_timers --n 1000 --json build/bench-timers.json
	$(BIN)/python -m tests.bench.bench_trail --reps 7 --json build/bench-trail.json
	$(BIN)/python -m tests.bench.bench_batch --reps 3 --json build/bench-batch.json
	$(BIN)/python -m tests.bench.bench_floor --json build/bench-floor.json
	$(BIN)/python -m tests.bench.bench_open_requests --sizes 10000,100000 --json build/bench-open-requests.json
	$(BIN)/python -m tests.bench.bench_risk --rate 1000 --seconds 10 --json build/bench-risk.json
	$(BIN)/python -m tests.bench.bench_adapter --n 1000 --rounds 3 --variant concurrent=. --variant serial=.,concurrency=1 --json build/bench-adapter.json
	@# Last: it ends with the one-line summary. With py-spy in the venv it also profiles (build/bench-profile).
	$(BIN)/python -m tests.bench.bench_e2e --json build/bench-e2e.json $(if $(wildcard $(BIN)/py-spy),--profile build/bench-profile)

# The fault suite: real processes (nats-server, broker, agencies) killed under load, single node and
# a 3-node cluster. FAULTS_LEVEL=short is about a minute; long (the default here) several.
FAULTS_LEVEL ?= long
.PHONY: faults
faults: $(STAMP)
	GREENCHANNEL_FAULTS_LEVEL=$(FAULTS_LEVEL) $(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
