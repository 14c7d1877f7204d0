VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench fuzz clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/samepage demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/scan_rate.py

# The fuzzer: the long hypothesis profile, then the bad-input campaign (details in FUZZ_OUT).
FUZZ_OUT ?= $(or $(TMPDIR),/tmp)/samepage-fuzz.json
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz SAMEPAGE_LIVE=0 $(PY) -m pytest -q tests/test_fuzz.py
	$(PY) tools/fuzz_campaign.py -o $(FUZZ_OUT)

clean:
	rm -rf $(VENV)
