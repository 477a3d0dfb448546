# Developer commands. Every target installs the project into $(VENV) first,
# and again only when setup.cfg or pyproject.toml changes.
#
#   make test    run the test suite (starts its own Prosody servers)
#   make demo    run the demo against a Prosody server started for it
#   make docs    build the HTML documentation into doc/_build/html
#   make bench   run the benchmarks (about 20 minutes) and rewrite doc/benchmarks.md;
#                make bench BENCH_ARGS=--quick takes under 5 minutes and writes
#                bench/results/quick only
#   make clean   remove $(VENV) and doc/_build
#
# VENV=/path/to/venv uses (or creates) another virtual environment.

VENV ?= .venv
PYTHON ?= python3

STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

.PHONY: test demo docs bench clean prosody ejabberd

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test,docs]'
	touch $@

# Installs prosody and openssl when missing (root or passwordless sudo).
prosody:
	scripts/ensure-prosody.sh

# Installs ejabberd and its SQLite driver when missing (root or passwordless sudo).
ejabberd:
	scripts/ensure-ejabberd.sh

# pytest exits with 5 when it collects no test, so an empty run fails too.
test: $(STAMP) prosody ejabberd
	$(VENV)/bin/pytest

demo: $(STAMP) prosody
	$(VENV)/bin/python -m libervia.demo

$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/pip install -e '.[bench]'
	touch $@

# The servers run on 127.0.0.1; the search and start figures also need the
# PostgreSQL server of the tests (LIBERVIA_TEST_PG_URL, see README.md).
bench: $(BENCH_STAMP) prosody ejabberd
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html doc doc/_build/html

clean:
	rm -rf $(VENV) doc/_build
