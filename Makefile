# Two commands for a fresh machine (see README.md):
#   make run    set up .venv if needed, then run the whole default pipeline and build its report
#   make test   set up .venv if needed, then run the test suite
#   make ci     what CI runs: the test suite with a real single-node SLURM cluster up (root, Debian),
#               so that the pipeline's run through the cluster is tested too
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Rules call `python -m mdgen.<stage>`: the venv's python must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test ci setup clean

run: $(VENV)/.installed
	$(BIN)/snakemake --cores all
	$(BIN)/snakemake --report results/report.html

test: $(VENV)/.installed
	$(BIN)/pytest

# Debian's chromium is for the report's browser test (tests/test_report_browser.py).
# ci/slurm/up.sh installs SLURM from Debian's packages and starts its daemons; down.sh stops them
# by PID, whatever the tests did. MDGEN_REQUIRE_SLURM turns "no cluster" into a failure, not a skip.
ci: $(VENV)/.installed
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	bash ci/slurm/up.sh
	MDGEN_REQUIRE_SLURM=1 $(BIN)/pytest; status=$$?; bash ci/slurm/down.sh; exit $$status

setup: $(VENV)/.installed

# Reinstalled when pyproject.toml changes. torch and torchvision go first, pinned to the tested
# releases, so that no other requirement resolves a different torch.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

clean:
	rm -rf results resources .snakemake
