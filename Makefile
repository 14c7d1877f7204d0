VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install build bench fuzz zoo clean pypy bench-pypy

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

# Everything but the live-kernel files on all cores, then those alone on a quiet machine
# (tests/conftest.py, LIVE_FILES).  TEST_WORKERS=0 runs the first part in one process.
TEST_WORKERS ?= auto
test: build
	-$(MAKE) -s pypy
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not live"
	$(PY) -m pytest -q -m live

bench: build
	$(PY) benchmarks/scan_rate.py

# PyPy (Debian's pypy3, a JIT) runs the same .py sources: .venv-pypy, with src on its path.
# Installs pypy3 with apt when it is missing and we are root; otherwise says how.
PYPY_VENV ?= .venv-pypy
PYPY_STAMP := $(PYPY_VENV)/.installed
$(PYPY_STAMP): requirements-pypy.txt
	@command -v pypy3 >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q pypy3 >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q pypy3 >/dev/null; }; }; } || \
	  { echo "make pypy: pypy3 is not installed (apt-get install pypy3)"; exit 1; }
	pypy3 -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/python -m pip install -q -r requirements-pypy.txt
	$(PYPY_VENV)/bin/python -c "import site, sys; open(site.getsitepackages()[0] + '/samepage-src.pth', 'w').write('$(CURDIR)/src\n')"
	# bin/python sets a 64 MB nursery unless PYPY_GC_NURSERY is given: with PyPy's default
	# (half the L2 cache) filling 8 M pages takes 40 s instead of 5 (README, "PyPy")
	rm -f $(PYPY_VENV)/bin/python
	printf '#!/bin/sh\n: "$${PYPY_GC_NURSERY:=64MB}"\nexport PYPY_GC_NURSERY\nexec "$$(dirname "$$0")/pypy3" "$$@"\n' > $(PYPY_VENV)/bin/python
	chmod +x $(PYPY_VENV)/bin/python
	touch $(PYPY_STAMP)

pypy: $(PYPY_STAMP)

bench-pypy: pypy
	$(PYPY_VENV)/bin/python benchmarks/scan_rate.py

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
	rm -rf $(VENV) $(PYPY_VENV) build src/samepage/_compiled.json
	find src/samepage -name '*.so' -delete
