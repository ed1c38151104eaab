# Everything runs through uv. On a machine with only Python, uv is installed first
# (pip --user) and then invoked as `python3 -m uv` when `uv` is not on PATH.

PYTHON ?= python3
# Re-evaluated at each use, so it sees a uv that `ensure-uv` has just installed.
UV = $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN = $(UV) run --frozen

.DEFAULT_GOAL := help
.PHONY: help ensure-uv install run up test lint format bench docs

help:
	@echo "make install   create .venv from uv.lock (installs uv if missing)"
	@echo "make run       broker + Postgres + all five services + the console, prefixed logs; Ctrl-C stops all"
	@echo "make up        broker + Postgres only; prints the env exports for a service run by hand"
	@echo "make test      the whole test suite against the embedded stack"
	@echo "make lint      ruff check, ruff format --check, mypy"
	@echo "make format    ruff format + ruff check --fix"
	@echo "make bench     benchmarks (JSON results in bench/results/)"
	@echo "make docs      docs/asyncapi.json, the topic table of docs/contracts.md and the Kafka ACL plan (deploy/kafka/acl-plan.*)"

ensure-uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || { \
		echo "uv not found: installing it with pip"; \
		$(PYTHON) -m pip install --user --quiet uv \
		|| $(PYTHON) -m pip install --quiet uv \
		|| $(PYTHON) -m pip install --user --quiet --break-system-packages uv; \
	}

install: ensure-uv
	$(UV) sync --frozen

run: ensure-uv
	$(RUN) python -m devstack run

up: ensure-uv
	$(RUN) python -m devstack up

test: ensure-uv
	$(RUN) pytest

lint: ensure-uv
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy contracts services devstack cmcli

format: ensure-uv
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

bench: ensure-uv
	$(RUN) python -m bench

docs: ensure-uv
	$(RUN) python -m contracts.asyncapi docs/asyncapi.json
	$(RUN) python -m contracts.acl deploy/kafka
	$(RUN) python -m contracts.topic_table docs/contracts.md
