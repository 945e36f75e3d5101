# busi-pipeline: `make run` runs the pipeline on the real data, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Where the BUSI dataset lies (a Dataset_BUSI_with_GT folder or its zip).
BUSI_SOURCE ?= ../shared/datasets/busi
# default: the real data in this project; smoke: synthetic data in scratch/smoke (seconds)
PROFILE ?= default
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup browser redis up-cluster run run-dvc test test-fast lint lock bench clean-venv up down app

setup: $(VENV)/.installed browser redis

## Debian's Chromium for the browser test (Playwright drives it; no `playwright install`).
## Installed when missing and running as root (part of setup, so `make test` has it);
## otherwise the test says why it skips.
browser:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	    || echo "could not install chromium with apt-get: the browser test will skip"; \
	else \
	  command -v chromium >/dev/null || echo "chromium missing and not root: the browser test will skip"; \
	fi

## Debian's Redis server, the Celery broker of `make up-cluster` (started by `busi up --cluster`,
## never as a system service). Installed like Chromium; otherwise the cluster tests skip.
redis:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
	    || echo "could not install redis-server with apt-get: busi up --cluster and its tests will not run"; \
	else \
	  command -v redis-server >/dev/null || echo "redis-server missing and not root: busi up --cluster and its tests will not run"; \
	fi

$(VENV)/.installed: requirements/lock.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

## The main job: import BUSI, then validate, split, augment, train, crop, classify, evaluate.
## Through Airflow (the busi_training DAG); tracked to the platform's MLflow when `make up` ran.
run: setup
	$(BIN)/busi run-training --profile $(PROFILE) $(if $(filter default,$(PROFILE)),--source "$(BUSI_SOURCE)")

## The same stages with `dvc repro` alone, without Airflow.
run-dvc: setup
	$(BIN)/busi run-pipeline --profile $(PROFILE) $(if $(filter default,$(PROFILE)),--source "$(BUSI_SOURCE)")

## The local platform: MLflow and Airflow UIs on 127.0.0.1 (stop with `make down`).
up: setup
	$(BIN)/busi up

## The local cluster: CeleryExecutor with two workers, Redis, Postgres and S3 (moto) on
## 127.0.0.1 (stop with `make down`); `busi run-training --cluster` runs busi_training on it.
up-cluster: setup
	$(BIN)/busi up --cluster

down:
	$(BIN)/busi down

## The Streamlit page on http://127.0.0.1:8501 (the registry's champion; MLFLOW_TRACKING_URI).
app: setup
	$(BIN)/busi app

## The whole suite on TEST_WORKERS pytest-xdist workers (0: one process, one test at a time).
## A unit of work is a test file, or a few files that must share a worker (tests/conftest.py).
## Two workers on two cores: 15.3-17.8 min on the slow machine type (AMD EPYC) at its fast hours,
## 38 min in one process at a slower one; a third worker only saturates the CPU. docs/testing.md
## has the measurements.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

## The unit tier only (no services, browsers or trained chains): a few minutes.
test-fast: setup
	$(BIN)/python -m pytest tests -m "not integration"

lint: setup
	$(BIN)/ruff check components busi tests bench dags
	$(BIN)/ruff format --check components busi tests bench dags

bench: setup
	$(BIN)/python bench/bench_data.py --source "$(BUSI_SOURCE)"

## Re-resolve requirements/lock.txt from requirements/requirements.in (needs network).
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile --python-version 3.11 requirements/requirements.in -o requirements/lock.txt

clean-venv:
	rm -rf $(VENV)
