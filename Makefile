# The two commands: `make run` (the app with demo data, nothing else to install) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
export ILD_VAR_DIR ?= $(CURDIR)/var

.PHONY: run test install lint format frontend clean-var

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

frontend:
	@if [ -f frontend/package.json ]; then cd frontend && npm ci --no-audit --no-fund && npm run build; fi

run: install frontend
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py load_demo --queue-jobs
	@echo "ILD Review on http://$(HOST):$(PORT)/  (Ctrl-C stops the web server and the worker)"
	@trap 'kill 0' EXIT; \
	$(VENV)/bin/celery -A webapp worker --beat --pool=solo --queues=default,cpu,gpu --loglevel=INFO & \
	$(VENV)/bin/gunicorn -c python:webapp.gunicorn_conf webapp.wsgi --bind $(HOST):$(PORT) --access-logfile -

test: install frontend
	@if [ -f frontend/package.json ]; then cd frontend && npm test; fi
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-var:
	rm -rf var
