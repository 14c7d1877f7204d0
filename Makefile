VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install build bench fuzz zoo clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The build step: Cython compiles the modules listed in setup.py in place (a no-op when they
# are up to date; an extension older than its source is never imported).  SAMEPAGE_PURE=1
# runs the .py sources.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(VENV)/bin/samepage demo

test: build
	$(PY) -m pytest -q

bench: build
	$(PY) benchmarks/scan_rate.py

# The fuzzer: the long hypothesis profile, then the bad-input campaign (details in FUZZ_OUT).
FUZZ_OUT ?= $(or $(TMPDIR),/tmp)/samepage-fuzz.json
fuzz: build
	HYPOTHESIS_PROFILE=fuzz SAMEPAGE_LIVE=0 $(PY) -m pytest -q tests/test_fuzz.py
	$(PY) tools/fuzz_campaign.py -o $(FUZZ_OUT)

# The zoo of real KSM bugs: each examples/bugs patch found (60 s budget), each scenario clean
# unpatched; a table, exit 1 if any expectation fails.
zoo: build
	$(PY) examples/bugs/run_zoo.py --budget 60

clean:
	rm -rf $(VENV) build src/samepage/_compiled.json
	find src/samepage -name '*.so' -delete
