# Concord developer entry points. `make help` lists them.
#
# The local stack (NATS + Postgres + the services) is driven by the scripts in
# deploy/local; everything it keeps (tools, data, logs, pid files) is under
# .local/ (CONCORD_STATE_DIR). Ports and URLs can be overridden from the
# environment: see deploy/local/env.sh.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Prefix for recipe lines that need the stack's variables
# (CONCORD_NATS_URL, CONCORD_DATABASE_URL, CONCORD_NATS_SERVER_BIN, ...).
WITH_ENV := source deploy/local/env.sh &&

.NOTPARALLEL:
.PHONY: help run build up services stop status test lint fmt clippy bench migrate clean-state

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# `make run` again while the stack is up is safe: cargo rebuilds what changed,
# infrastructure that runs is left alone, and services.sh restarts only the
# services whose binary was rebuilt (the others keep running).
run: build up services ## Build, start NATS + Postgres + all services, show what runs where
	@bash deploy/local/info.sh

build: ## cargo build --release of every binary
	cargo build --release --workspace --bins

up: ## Start NATS (JetStream) and Postgres only, installing them if missing
	bash deploy/local/up.sh

services: ## Start the service binaries (needs `make build` and `make up`)
	bash deploy/local/services.sh start

stop: ## Stop the services, NATS and Postgres (data is kept)
	bash deploy/local/down.sh

status: ## Show which services run
	@bash deploy/local/services.sh status || true

# Tests start their own nats-server on a random port (CONCORD_NATS_SERVER_BIN)
# and create a database per test through CONCORD_TEST_DATABASE_URL.
test: up ## fmt check, clippy, then all tests against the local Postgres
	$(WITH_ENV) bash deploy/local/drop-test-dbs.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@$(WITH_ENV) export CONCORD_NATS_SERVER_BIN CONCORD_TEST_DATABASE_URL CONCORD_DATABASE_URL; \
	if cargo nextest --version >/dev/null 2>&1; then \
	  echo "+ cargo nextest run --workspace"; \
	  cargo nextest run --workspace --no-tests=warn; \
	  echo "+ cargo test --workspace --doc"; \
	  cargo test --workspace --doc; \
	else \
	  echo "+ cargo test --workspace"; \
	  cargo test --workspace; \
	fi

lint: ## fmt check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

clippy: ## clippy with warnings as errors
	cargo clippy --workspace --all-targets -- -D warnings

bench: ## Run the benchmarks (package concord-bench) when there are any
	@if cargo metadata --no-deps --format-version 1 2>/dev/null | grep -q '"name":"concord-bench"'; then \
	  bash deploy/local/up.sh; \
	  $(WITH_ENV) cargo run --release -p concord-bench -- all; \
	else \
	  echo "no benchmarks yet"; \
	fi

migrate: ## Apply every service's database migrations and exit (services also do it at start)
	$(WITH_ENV) for service in registry dispatcher state; do "$$CONCORD_BIN_DIR/concord-$$service" --migrate-only || exit 1; done

clean-state: ## Stop everything and delete .local (tools, data, logs)
	bash deploy/local/down.sh --purge
