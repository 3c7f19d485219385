# Strata: `make run` for a local portal with a demo hospital, `make test` for the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DEBUG ?= 1

.PHONY: install proxy run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The OpenID Connect provider the single sign-on tests run on loopback (tests/sso_idp): its npm
# packages, pinned by package-lock.json, when npm is there; without npm those tests skip (and fail
# under REQUIRE_SERVICES=1).
install: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then \
	  test tests/sso_idp/node_modules/.package-lock.json -nt tests/sso_idp/package-lock.json || \
	    npm ci --prefix tests/sso_idp --no-audit --no-fund --loglevel=error; \
	else \
	  echo "npm is not installed: the single sign-on tests that need the OpenID Connect test provider will skip (apt-get install nodejs npm)"; \
	fi

# nginx, which manage.py serve runs in front of gunicorn: installed with apt-get when missing and
# run as root; otherwise (no root, no apt) serve runs gunicorn alone and says so.
proxy:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nginx (apt-get)"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null 2>&1; }; } || \
	    echo "nginx could not be installed: manage.py serve will run gunicorn alone"; \
	  else \
	    echo "nginx is not installed (as root: apt-get install nginx): manage.py serve will run gunicorn alone"; \
	  fi; }

# .env: this checkout's DEBUG=1 and SECRET_KEY, written once, so that the README's manage.py
# commands run as written in another shell (saas/localenv.py).
run: install proxy
	$(BIN)/python -m saas.localenv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py serve

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
