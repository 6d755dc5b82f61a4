# tone-platform: every target a newcomer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The ONNX Runtime: exactly one of cpu and gpu (they install the same module); a GPU machine uses
# make install EXTRAS=gpu,dev,lm,stack,platform
EXTRAS ?= cpu,dev,lm,stack,platform
MODELS := .cache/test-models
# the whole suite takes ~15 min; past this it is stuck (CI's own limit would end it with no summary)
TEST_LIMIT ?= 60m
COMPOSE ?= docker compose

.PHONY: help install browser test chaos lint format typecheck models run demo down bench docker-build docker-up docker-down docker-logs clean

help: ## list every target
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@case ",$(EXTRAS)," in *,cpu,*) case ",$(EXTRAS)," in *,gpu,*) \
	  echo "EXTRAS=$(EXTRAS): choose one of cpu and gpu (both install the module onnxruntime)"; exit 2;; esac;; esac
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its cpu (ONNX Runtime), dev, lm, stack and platform extras

# The console's browser tests drive Debian's chromium and firefox-esr (never a browser downloaded by
# a test tool); Firefox plays Web Audio only with an audio server: pulseaudio (a null sink, per test run).
BROWSERS := /usr/bin/chromium /usr/bin/firefox-esr /usr/bin/pulseaudio
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: ## install Debian's chromium, firefox-esr and pulseaudio for the console's end-to-end tests, when missing
	@for b in $(BROWSERS); do test -x $$b || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing Debian's chromium, firefox-esr and pulseaudio for the console tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium firefox-esr pulseaudio; fi

models: $(STAMP) ## build the test models (recognizing tones model, null model, cost-faithful model) into .cache/
	$(BIN)/tone-platform dev make-model --kind tones --out $(MODELS)/tones >/dev/null
	$(BIN)/tone-platform dev make-model --kind null --out $(MODELS)/null >/dev/null
	@test -f $(MODELS)/cost/model.onnx || $(BIN)/tone-platform dev make-model --kind cost --out $(MODELS)/cost >/dev/null

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy over api, worker and shared (pydantic plugin)
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) browser models lint typecheck ## install everything (chromium too), build the test models, run ruff, mypy and the whole suite (the fault run: make chaos)
	timeout --foreground --kill-after=60 $(TEST_LIMIT) $(BIN)/pytest -m "not chaos" || { rc=$$?; \
	  if [ $$rc -eq 124 ] || [ $$rc -eq 137 ]; then echo "make test: the suite did not end within $(TEST_LIMIT)" >&2; fi; \
	  exit $$rc; }

chaos: $(STAMP) models ## the fault run alone: kills workers, restarts Redis and PostgreSQL; figures in test-output/chaos.json
	$(BIN)/pytest -m chaos -s tests/chaos

run: $(STAMP) ## the whole platform, no Docker: Postgres, Redis, API :8000, worker, beat, Flower :5555 (Ctrl-C stops)
	$(BIN)/tone-platform up $(UP_ARGS)

down: $(STAMP) ## stop what `tone-platform up --detach` started
	$(BIN)/tone-platform down

demo: $(STAMP) ## transcribe a demo recording (T-one from TONE_MODEL_PATH or Hugging Face; else the tone test model)
	$(BIN)/tone-platform demo $(FILE)

bench: $(STAMP) models ## cost-faithful model: engine B=1 vs batched vs this CPU's matmul ceiling; the engine alone (null model); beam vs greedy with an LM; then the platform
	@{ $(BIN)/python -c "import sherpa_onnx, aiohttp" && test -x $(BIN)/sherpa-onnx-online-websocket-server; } 2>/dev/null || $(BIN)/python -m pip install -q -e ".[$(EXTRAS),bench]"
	$(BIN)/tone-platform bench --model $(MODELS)/cost/model.onnx

docker-build: ## build the API and worker images (needs a Docker engine)
	$(COMPOSE) build

# .env (read by docker compose): generated once with random passwords for Flower and Postgres.
.env:
	@umask 077; { echo "# written by make docker-up: docker compose reads it (keep it private)"; \
	  echo "TONE_FLOWER_PASSWORD=$$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"; \
	  echo "TONE_POSTGRES_PASSWORD=$$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"; } > .env
	@echo "wrote .env (TONE_FLOWER_PASSWORD, TONE_POSTGRES_PASSWORD)"

docker-up: .env ## start the full compose stack in the background (api :8000, worker, beat, flower :5555, redis, postgres)
	$(COMPOSE) up -d --build
	@echo "API     http://localhost:$${TONE_API_PORT:-8000}  (docs: /docs)"
	@echo "Flower  http://localhost:$${TONE_FLOWER_PORT:-5555}  (user admin, password: TONE_FLOWER_PASSWORD in .env)"
	@echo "a key:  $(COMPOSE) exec api tone-platform keys create --tenant NAME"
	@echo "GPU:    $(COMPOSE) --profile gpu up -d   (worker-gpu consumes queue gpu)"

docker-down: ## stop and remove the compose stack's containers (volumes are kept)
	$(COMPOSE) --profile gpu down

docker-logs: ## follow the compose stack's logs
	$(COMPOSE) logs -f --tail=100

clean: ## remove the venv, caches and built models
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
